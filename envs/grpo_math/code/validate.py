"""
Locked, hidden evaluation of the grpo_math environment: the MAX validation
accuracy over the checkpoints a training run saved.

Nothing the run wrote is trusted except the weights in its checkpoints:
- the validation problems are read here (real: $TOOLKIT_DATA_DIR/val.jsonl, the
  500 MATH-500 problems, optionally pinned by GRPO_EVAL_FINGERPRINT; smoke:
  regenerated in memory from the locked generator);
- the architecture, config and tokenizer come from the base model (real: the
  prepared snapshot; smoke: rebuilt in memory), never from the checkpoint;
- each checkpoint must hold exactly the base model's parameter names and shapes,
  as safetensors (no pickles: loading them could run the run's code);
- prompt, decoding (the release's: the rollout sampling settings, temperature 1.0,
  top_p 1.0, up to 1024 tokens, stop at </answer>, one sampled answer per problem,
  with a fixed seed) and grading (grader.py, math-verify) are fixed here; at most
  MAX_CHECKPOINTS are scored (train.py saves steps 0, 2, ..., 18 of 20);
- the script re-executes itself under `python -P -s`, so modules the run dropped
  into the codebase or ~/.local (say a fake math_verify.py) cannot shadow the real ones.

Last stdout line: {"val_accuracy": max, "val_accuracy_per_step": {...}, "val_problems": N, ...},
or {"invalid": reason} when a checkpoint breaks the rules. Exits 1 if there is nothing to score.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not (sys.flags.safe_path and sys.flags.no_user_site):
    # first of all: re-run with the codebase dir (-P) and the user's site dir (-s) off sys.path
    os.execv(sys.executable, [sys.executable, "-P", "-s", os.path.abspath(__file__), *sys.argv[1:]])

import importlib.util  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_CHECKPOINTS = 10  # steps 0, 2, ..., 18 of 20: more checkpoints would mean more draws for the max
# The paper's evaluation decoding is its rollout sampling: one sampled answer per problem, not greedy, so each
# checkpoint's accuracy is itself a noisy draw. The seed is fixed so re-scoring the same weights repeats it.
EVAL_TEMPERATURE = 1.0
EVAL_TOP_P = 1.0
EVAL_MAX_TOKENS = 1024
EVAL_STOP = "</answer>"
EVAL_SEED = 0
SMOKE_EVAL_MAX_TOKENS = 24
VLLM_GPU_MEMORY_UTILIZATION = 0.85  # nothing else is on the GPU during the eval
HF_BATCH_SIZE = 32
FLOAT_DTYPES = ("F16", "BF16", "F32")
STEP_DIR = re.compile(r"step_(\d{1,6})")
R1_ZERO_PROMPT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>.\nUser: {question}\nAssistant: <think>"
)


class Invalid(Exception):
    """The run broke a rule: reported as {"invalid": reason}, not as a crash."""


def load_locked(name: str):
    # the codebase dir is not on sys.path (python -P): load the locked siblings by path
    spec = importlib.util.spec_from_file_location(f"grpo_locked_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


data = load_locked("data")
grader = load_locked("grader")


# -----------------------------------------------------------------------------
# what is trusted: the validation set and the base model


def val_problems() -> list[dict]:
    if data.smoke():
        return data.read_jsonl(data.hidden_dir() / "val.jsonl")
    expected = os.environ.get("GRPO_EVAL_FINGERPRINT", "").strip()
    actual = data.fingerprint(data.data_dir(), data.hidden_dir())
    if not expected:
        print(f"warning: GRPO_EVAL_FINGERPRINT is not set; pin it in env.yaml to {actual}", file=sys.stderr)
    elif expected != actual:
        raise Invalid(f"validation data or base model in {data.data_dir()} changed (fingerprint {actual[:12]}, "
                      f"pinned {expected[:12]}); re-run prepare.py and update GRPO_EVAL_FINGERPRINT")
    return data.read_jsonl(data.hidden_dir() / "val.jsonl")


def base_tokenizer_and_config():
    if data.smoke():
        tokenizer = data.smoke_tokenizer()
        return tokenizer, data.smoke_model_config(tokenizer)
    from transformers import AutoConfig, AutoTokenizer
    return AutoTokenizer.from_pretrained(data.model_dir()), AutoConfig.from_pretrained(data.model_dir())


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes


# -----------------------------------------------------------------------------
# what the run produced: checkpoints, checked before use


def find_checkpoints() -> list[tuple[int, Path]]:
    root = data.checkpoint_root()
    if root.is_symlink():
        raise Invalid(f"{root} is a symlink: checkpoints must be the run's own files")
    found = sorted((int(m.group(1)), p) for p in root.glob("step_*") if (m := STEP_DIR.fullmatch(p.name)))
    if len(found) > MAX_CHECKPOINTS:
        raise Invalid(f"{len(found)} checkpoints in {root}; at most {MAX_CHECKPOINTS} are allowed")
    return found


def checkpoint_files(path: Path, shapes: dict[str, tuple[int, ...]], tied: bool) -> list[Path]:
    """The checkpoint's safetensors files, once their headers show exactly the base model's parameters."""
    from safetensors import safe_open
    files = sorted(path.glob("*.safetensors"))
    if path.is_symlink() or not files or any(f.is_symlink() or not f.is_file() for f in files):
        raise Invalid(f"checkpoint {path.name}: expected a directory of regular *.safetensors files")
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:  # reads the header only
            found.update({k: (tuple(st.get_slice(k).get_shape()), st.get_slice(k).get_dtype()) for k in st.keys()})
    if tied:
        found.pop("lm_head.weight", None)  # the embedding is the output layer
    if set(found) != set(shapes):
        odd = sorted(set(found) ^ set(shapes))[:5]
        raise Invalid(f"checkpoint {path.name}: parameters differ from the base model's (e.g. {odd})")
    bad = [k for k, (shape, dtype) in found.items() if shape != shapes[k] or dtype not in FLOAT_DTYPES]
    if bad:
        raise Invalid(f"checkpoint {path.name}: wrong shape or dtype for {bad[:5]}")
    return files


def load_state(files: list[Path], tied: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f), device="cpu"))
    if tied:
        state.pop("lm_head.weight", None)
    return state


# -----------------------------------------------------------------------------
# generation: vLLM when there is a GPU and vLLM, HF generate otherwise


def use_vllm() -> bool:
    return (torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None and not data.smoke()
            and os.environ.get("GRPO_USE_VLLM", "1") != "0")


class VLLMGenerator:
    def __init__(self, max_tokens: int):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine must live here to swap weights
        from vllm import LLM, SamplingParams
        # one engine seed, checkpoints scored in step order: re-scoring the same weights repeats the draws
        # (on the same GPU and vLLM version)
        self.llm = LLM(model=str(data.model_dir()), dtype="bfloat16", seed=EVAL_SEED, enable_prefix_caching=False,
                       gpu_memory_utilization=VLLM_GPU_MEMORY_UTILIZATION)
        self.params = SamplingParams(n=1, temperature=EVAL_TEMPERATURE, top_p=EVAL_TOP_P, max_tokens=max_tokens,
                                     stop=[EVAL_STOP], include_stop_str_in_output=True)

    def load(self, state: dict[str, torch.Tensor]) -> None:
        try:
            worker = self.llm.llm_engine.model_executor.driver_worker
            getattr(worker, "worker", worker).model_runner.model.load_weights(state.items())
        except AttributeError:
            self.llm.apply_model(lambda model: model.load_weights(state.items()))

    def generate(self, prompts: list[str]) -> list[str]:
        return [out.outputs[0].text for out in self.llm.generate(prompts, self.params, use_tqdm=False)]


class HFGenerator:
    def __init__(self, tokenizer, config, max_tokens: int):
        from transformers import AutoModelForCausalLM
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(1)  # smoke jobs get one core
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        with torch.device(self.device):  # built where it runs: a 1.5B random init on the CPU alone takes ~30 s
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.tokenizer.padding_side = "left"

    def load(self, state: dict[str, torch.Tensor]) -> None:
        result = self.model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        assert not result.unexpected_keys and set(result.missing_keys) <= tied, result

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> list[str]:
        torch.manual_seed(EVAL_SEED)  # every checkpoint from the same seed: re-scoring repeats the draws
        texts = []
        for start in range(0, len(prompts), HF_BATCH_SIZE):
            enc = self.tokenizer(prompts[start:start + HF_BATCH_SIZE], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            # top_k=0: the full distribution, as vLLM samples it (HF would keep only the top 50 by default)
            out = self.model.generate(**enc, do_sample=True, temperature=EVAL_TEMPERATURE, top_p=EVAL_TOP_P,
                                      top_k=0, num_return_sequences=1, max_new_tokens=self.max_tokens,
                                      stop_strings=[EVAL_STOP], tokenizer=self.tokenizer,
                                      pad_token_id=self.tokenizer.pad_token_id)
            texts += self.tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        return [t.split(EVAL_STOP)[0] + EVAL_STOP if EVAL_STOP in t else t for t in texts]


# -----------------------------------------------------------------------------
# scoring


def score(responses: list[str], golds: list[list]) -> tuple[float, float]:
    """(accuracy, share of well-formed responses); grading runs in the main thread (math-verify's alarm)."""
    correct = sum(grader.grade(r, g) for r, g in zip(responses, golds))
    formatted = sum(grader.extract_answer(r) is not None for r in responses)
    return correct / len(golds), formatted / len(golds)


def evaluate() -> dict:
    t0 = time.time()
    problems = val_problems()
    checkpoints = find_checkpoints()
    if not checkpoints:
        raise FileNotFoundError(f"the run saved no checkpoint under {data.checkpoint_root()} "
                                "(train.py must call data.save_checkpoint(model, step))")
    tokenizer, config = base_tokenizer_and_config()
    shapes, tied = expected_shapes(config), bool(getattr(config, "tie_word_embeddings", False))
    files = {step: checkpoint_files(path, shapes, tied) for step, path in checkpoints}  # check all first
    max_tokens = SMOKE_EVAL_MAX_TOKENS if data.smoke() else EVAL_MAX_TOKENS
    generator = VLLMGenerator(max_tokens) if use_vllm() else HFGenerator(tokenizer, config, max_tokens)
    prompts = [R1_ZERO_PROMPT.format(question=p["problem"]) for p in problems]
    golds = [grader.parse_gold(str(p["answer"])) for p in problems]
    accuracy, format_rate = {}, {}
    for step, step_files in files.items():  # one checkpoint in memory at a time
        generator.load(load_state(step_files, tied))
        accuracy[str(step)], format_rate[str(step)] = score(generator.generate(prompts), golds)
        print(json.dumps({"step": step, "val_accuracy": accuracy[str(step)],
                          "val_format_rate": format_rate[str(step)]}), file=sys.stderr, flush=True)
    best = max(accuracy, key=lambda s: (accuracy[s], -int(s)))
    return {"val_accuracy": accuracy[best], "val_accuracy_per_step": accuracy, "val_best_step": int(best),
            "val_format_rate_per_step": format_rate, "val_problems": len(problems),
            "eval_backend": "vllm" if use_vllm() else "hf", "eval_s": round(time.time() - t0, 1)}


def main() -> int:
    try:
        metrics = evaluate()
    except Invalid as exc:
        print(json.dumps({"invalid": str(exc)}), flush=True)
        return 0
    except FileNotFoundError as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("GRPO_KEEP_CHECKPOINTS", "") != "1":  # ~3 GB each for the real model
        shutil.rmtree(data.checkpoint_root(), ignore_errors=True)
    print(json.dumps(metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
