"""
Helper of bench/gpu_check.sh (one short check of both environments on a lent GPU). Subcommands:

    env                         print the machine's versions and GPU as one JSON line
    tee STAGE WORK ALL_LOG      timestamp stdin lines into WORK/logs/STAGE.log and ALL_LOG (and stdout)
    build-grpo DIR [--tiny]     a "prepared" grpo_math data dir with synthetic content (see build_grpo)
    summarize WORK OUT_JSON     parse the stage logs into OUT_JSON and print the figures

Only the standard library, numpy, torch, transformers and tokenizers: the GPU machine has no network and
none of our package.
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def configured_num_iterations() -> int | None:
    """num_iterations as envs/nanogpt/code/train.py sets it (the value the extrapolation is compared with)."""
    text = (REPO / "envs/nanogpt/code/train.py").read_text()
    match = re.search(r"^num_iterations = ([\d_]+)", text, re.M)
    return int(match.group(1).replace("_", "")) if match else None

# -----------------------------------------------------------------------------
# env


def cmd_env() -> None:
    import platform

    info = {"python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["cuda_available"] = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_count"] = torch.cuda.device_count()
            info["gpu_mem_gib"] = round(props.total_memory / 2**30, 1)
    except Exception as exc:  # report, never crash the check
        info["torch_error"] = repr(exc)
    from importlib.metadata import version

    for module, dist in (("transformers", "transformers"), ("tokenizers", "tokenizers"), ("numpy", "numpy"),
                         ("safetensors", "safetensors"), ("sympy", "sympy"), ("math_verify", "math-verify"),
                         ("latex2sympy2_extended", "latex2sympy2_extended"), ("antlr4", "antlr4-python3-runtime"),
                         ("vllm", "vllm")):
        try:  # importable (from where), and the installed version
            info[module] = f"{version(dist)} ({Path(__import__(module).__file__).parent.parent})"
        except Exception as exc:  # a missing or broken module is reported, not fatal
            info[module] = None if isinstance(exc, ImportError) else repr(exc)
    print(json.dumps({"event": "gpu_check_env", **info}), flush=True)


# -----------------------------------------------------------------------------
# tee: every line gets the seconds since the stage started, so the summary can time compile, steps, etc.


def cmd_tee(stage: str, work: str, all_log: str) -> None:
    t0 = time.time()
    logs = Path(work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{stage}.log", "a", encoding="utf-8") as own, open(all_log, "a", encoding="utf-8") as both:
        for raw in sys.stdin.buffer:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            dt = time.time() - t0
            own.write(f"[{dt:8.2f}] {line}\n")
            both.write(f"[{stage} {dt:8.2f}] {line}\n")
            own.flush()
            both.flush()
            print(f"[{stage} {dt:7.1f}] {line}", flush=True)


# -----------------------------------------------------------------------------
# build-grpo: what envs/grpo_math/prepare.py would leave (train.jsonl, val.jsonl, model/), synthetic content

# Qwen/Qwen2.5-Math-1.5B's config.json as the hub has it (written verbatim below, so the device's transformers
# parses the same file the real prepared snapshot holds)
QWEN25_MATH_15B_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
    "intermediate_size": 8960, "max_position_embeddings": 4096, "max_window_layers": 21, "model_type": "qwen2",
    "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.37.0", "use_cache": True, "use_mrope": False, "use_sliding_window": False,
    "vocab_size": 151936,
}
# the dry run's model: the same architecture, tiny
TINY_OVERRIDES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "vocab_size": 8192}
QWEN_REGULAR_TOKENS = 151643  # Qwen2.5's BPE vocabulary; its special tokens follow (<|endoftext|> = 151643)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def arithmetic_problems(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        op = rng.choice(["+", "-"])
        problem = f"Compute ${a} {op} {b} \\times {c}$."
        if problem in seen:
            continue
        seen.add(problem)
        rows.append({"problem": problem, "answer": str(a + b * c if op == "+" else a - b * c)})
    return rows


def r1_zero_prompt() -> str:
    """The locked prompt, read from validate.py's source (importing it would need math_verify)."""
    tree = ast.parse((REPO / "envs/grpo_math/code/validate.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "R1_ZERO_PROMPT" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("R1_ZERO_PROMPT not found in validate.py")


# Qwen2's pre-tokenizer regex (transformers' models/qwen2/tokenization_qwen2.py)
QWEN_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                          r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def qwen_like_tokenizer(n_regular: int, texts: list[str]):
    """A byte-level BPE of Qwen2.5's size and pipeline, built offline. AutoTokenizer loads any qwen2 model dir as
    Qwen2Tokenizer, which rebuilds a byte-level BPE from the saved vocab and merges, so the tokenizer has to be
    one (a WordLevel one would be read back as bytes). Merges: first those a BPE trainer learns from the prompts
    (the template and problems tokenize into whole words, as with Qwen), then synthetic left-to-right chains
    " x" -> " xy" -> " xyz" (-> " xyzw") over ASCII letters until the vocabulary has n_regular tokens, then
    Qwen's special tokens (eos = pad = <|endoftext|> = id 151643 at full size). A random model samples almost
    only chain tokens; each decodes to a space-led word that re-encodes to that one token, so rollouts keep
    their sampled length through train.py's decode / re-tokenize round trip."""
    import itertools
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def pipeline(tok):
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        return tok

    learner = pipeline(Tokenizer(models.BPE()))
    learner.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=min(n_regular, 20_000), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = dict(learned["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    letters = string.ascii_letters

    def chains():
        yield from (("\u0120", x) for x in letters)  # \u0120 = the byte-level space
        for depth in (1, 2, 3):
            for prefix in itertools.product(letters, repeat=depth):
                for x in letters:
                    yield "\u0120" + "".join(prefix), x

    for left, right in chains():
        if len(vocab) >= n_regular:
            break
        if left in vocab and right in vocab and left + right not in vocab:
            vocab[left + right] = len(vocab)
            merges.append((left, right))
    tok = pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges)))
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0], pad_token=SPECIALS[0])


def save_tokenizer_like_qwen(tokenizer, model_dir: Path) -> None:
    """tokenizer.json plus vocab.json / merges.txt and a tokenizer_config.json naming Qwen2Tokenizer, as the hub
    snapshot of Qwen2.5-Math-1.5B has them."""
    tokenizer.save_pretrained(model_dir)
    model = json.loads((model_dir / "tokenizer.json").read_text())["model"]
    (model_dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (model_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(tokenizer_class="Qwen2Tokenizer", add_prefix_space=False, bos_token=None, unk_token=None,
               clean_up_tokenization_spaces=False, model_max_length=131072, errors="replace")
    cfg.pop("backend", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def roundtrip_check(model_dir: Path, vocab_size: int) -> dict:
    """What train.py sees: AutoTokenizer's reading of the dir; random ids (as a random model samples them) must
    decode and re-encode to about as many tokens."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (8, 128), generator=gen).tolist()
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
    return {"tokenizer_class": type(tok).__name__, "tokenizer_len": len(tok), "eos_id": tok.eos_token_id,
            "pad_id": tok.pad_token_id, "roundtrip_tokens_per_128": round(sum(lengths) / len(lengths), 1)}


def cmd_build_grpo(out: str, tiny: bool, n_train: int = 400, n_val: int = 16) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    t0 = time.time()
    root = Path(out)
    (root / "model").mkdir(parents=True, exist_ok=True)
    problems = arithmetic_problems(n_train + n_val, seed=0)
    val, train = problems[:n_val], problems[n_val:]
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        with open(root / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    config_dict = dict(QWEN25_MATH_15B_CONFIG, **(TINY_OVERRIDES if tiny else {}))
    n_regular = QWEN_REGULAR_TOKENS if not tiny else config_dict["vocab_size"] - len(SPECIALS) - 8
    prompt = r1_zero_prompt()
    tokenizer = qwen_like_tokenizer(n_regular, [prompt.format(question=p["problem"]) for p in problems]
                                    + ["</think> <answer> </answer>"])
    assert len(tokenizer) <= config_dict["vocab_size"], (len(tokenizer), config_dict["vocab_size"])
    if tiny:  # the tiny vocabulary moves <|endoftext|>
        config_dict["bos_token_id"] = config_dict["eos_token_id"] = tokenizer.eos_token_id
    assert tokenizer.eos_token_id == config_dict["eos_token_id"], (tokenizer.eos_token_id, config_dict["eos_token_id"])
    save_tokenizer_like_qwen(tokenizer, root / "model")
    with open(root / "model/config.json", "w") as f:
        json.dump(config_dict, f, indent=2)
    tok_info = roundtrip_check(root / "model", config_dict["vocab_size"])
    t_tok = time.time() - t0

    # random weights straight in bf16 (what the hub stores), saved as one safetensors file as the hub snapshot
    # has it (tied embeddings: lm_head.weight is not stored). Initialised on the GPU when there is one: the CPU's
    # serial normal_ takes ~30 s for 1.5B weights, the GPU a second (this runs beside the GPU-bound nanogpt eval)
    torch.manual_seed(0)
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    config = AutoConfig.from_pretrained(root / "model")
    device = "cpu"
    if torch.cuda.is_available():
        try:
            torch.zeros(1, device="cuda")
            device = "cuda"
        except RuntimeError as exc:  # e.g. a GPU in exclusive-process mode, held by the eval
            print(f"build-grpo: no GPU for the init ({exc}); initialising on the CPU", flush=True)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    t_init = time.time() - t0 - t_tok
    state = {k: v.to("cpu").contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    init_device = str(next(model.parameters()).device)
    del model
    save_file(state, str(root / "model/model.safetensors"), metadata={"format": "pt"})
    n_params = sum(v.numel() for v in state.values())
    print(json.dumps({"event": "grpo_build", "dir": str(root), "train": len(train), "val": len(val),
                      **tok_info, "vocab_size": config.vocab_size,
                      "params_m": round(n_params / 1e6, 1),
                      "prompt_tokens": len(tokenizer(prompt.format(question=problems[0]["problem"])).input_ids),
                      "tokenizer_s": round(t_tok, 1), "init_s": round(t_init, 1), "init_device": init_device,
                      "total_s": round(time.time() - t0, 1)}), flush=True)


# -----------------------------------------------------------------------------
# summarize


def read_log(work: Path, stage: str) -> list[tuple[float, str]]:
    path = work / "logs" / f"{stage}.log"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.match(r"\[\s*([\d.]+)\] ?(.*)$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2)))
    return rows


def json_lines(rows: list[tuple[float, str]]) -> list[dict]:
    out = []
    for _, text in rows:
        text = text.strip()
        if text.startswith("{") and text.endswith("}"):
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(text))
    return out


def peak_mem_gib(work: Path, stage: str) -> float | None:
    """Peak of nvidia-smi's memory.used (MiB) sampled during the stage: the whole GPU, CUDA context included."""
    path = work / f"mem_{stage}.csv"
    if not path.is_file():
        return None
    values = [float(v) for v in re.findall(r"^\s*(\d+(?:\.\d+)?)\s*$", path.read_text(), re.M)]
    return round(max(values) / 1024, 2) if values else None


def stage_table(work: Path) -> dict:
    stages = {}
    path = work / "stages.tsv"
    if path.is_file():
        for line in path.read_text().splitlines():
            name, rc, wall, limit = (line.split("\t") + ["", "", "", ""])[:4]
            status = {"0": "ok", "124": "timeout", "137": "killed", "skip": "skipped"}.get(rc, "failed")
            stages[name] = {"status": status, "rc": rc, "wall_s": float(wall or 0), "timeout_s": limit}
    return stages


def summarize_nanogpt(work: Path, stages: dict) -> dict:
    rows = read_log(work, "nanogpt_train")
    res: dict = {}
    step_re = re.compile(r"step\s+(\d+) \| loss ([\d.naninf]+) \| norm ([\d.naninf]+) \| lr (\S+) \|\s+([\d.]+)s \|")
    t_params, steps = None, []
    for t, text in rows:
        if t_params is None and "M parameters, world" in text:
            t_params = t
            res["model_line"] = text.strip()
        m = step_re.search(text)
        if m:
            steps.append((t, int(m.group(1)), float(m.group(2)), float(m.group(5))))
        m = re.search(r"trained (\d+) of num_iterations=(\d+) steps \(([\d.]+)B tokens\) in ([\d.]+)s", text)
        if m:
            res.update(steps_done=int(m.group(1)), num_iterations=int(m.group(2)), train_s=float(m.group(4)))
    if t_params is not None:
        res["startup_s"] = round(t_params, 1)  # torchrun + imports + model build, until the params line
    if steps:
        t1, s1, _, el1 = steps[0]
        res["first_loss"], res["last_logged_loss"], res["last_logged_step"] = steps[0][2], steps[-1][2], steps[-1][1]
        if t_params is not None:  # params line .. step-1 line, minus step 1 itself: compile + warm-up pass
            res["compile_warmup_s"] = round(t1 - t_params - el1, 1)
        res["step1_s"] = round(el1, 2)
        later = [s for s in steps if s[1] >= 10]
        if len(later) >= 2:  # steady state: from step 10 on, past the first (slower) steps
            (_, sa, _, ela), (_, sb, _, elb) = later[0], later[-1]
            ms = 1000 * (elb - ela) / (sb - sa)
        else:
            ms = 1000 * steps[-1][3] / steps[-1][1]
        res["ms_per_step"] = round(ms, 1)
        tok_s = 262_144 / (ms / 1000)
        res["tokens_per_s_1gpu"] = round(tok_s)
        tok_s8 = 8 * tok_s
        res["extrapolation_8gpu_linear"] = {
            "tokens_per_s": round(tok_s8),
            "implied_num_iterations_1500s": int(1500 * tok_s8 / 262_144),
            "configured_num_iterations": configured_num_iterations(),
            "note": "8 x the 1-GPU rate (8 micro-steps of 32x1024 per step on 1 GPU vs 1 per GPU on 8): an "
                    "upper bound, DDP all-reduce not included",
        }
    res["peak_gpu_mem_used_gib_train"] = peak_mem_gib(work, "nanogpt_train")
    res["eval"], res["eval_wall_s"], res["peak_gpu_mem_used_gib_eval"] = final_line(work, stages, "nanogpt_eval")
    return res


def final_line(work: Path, stages: dict, stage: str) -> tuple:
    """(the stage's last JSON line, its wall seconds, its peak GPU memory): what an eval stage reports."""
    lines = json_lines(read_log(work, stage))
    return (lines[-1] if lines else None), stages.get(stage, {}).get("wall_s"), peak_mem_gib(work, stage)


def summarize_grpo(work: Path, stages: dict) -> dict:
    res: dict = {}
    build = [j for j in json_lines(read_log(work, "grpo_build")) if j.get("event") == "grpo_build"]
    res["build"] = build[-1] if build else None
    lines = json_lines(read_log(work, "grpo_train"))
    start = [j for j in lines if j.get("event") == "start"]
    if start:
        res["start"] = start[-1]
    steps = [j for j in lines if "step" in j and "step_s" in j]
    res["steps"] = [{"step": j["step"], "gen_s": j["gen_s"], "update_and_save_s": round(j["step_s"] - j["gen_s"], 1),
                     "step_s": j["step_s"], "elapsed_s": j["elapsed_s"], "train_reward": j.get("train_reward"),
                     "loss": j.get("loss")} for j in steps]
    done = [j for j in lines if j.get("event") == "done"]
    if done:
        res["done_elapsed_s"] = done[-1]["elapsed_s"]
    mem = [j for j in lines if j.get("event") == "gpu_check_memory"]
    if mem:
        res["torch_memory"] = mem[-1]
    res["peak_gpu_mem_used_gib_train"] = peak_mem_gib(work, "grpo_train")
    ck = work / "grpo_checkpoints.txt"
    res["checkpoints"] = ck.read_text().split() if ck.is_file() else None
    if steps:
        # crude scale-up of the HF-generate fallback to the real config (128 prompts x 8, 1024 tokens): 8x the
        # rollouts in 8x the generate calls (batch 64), each ~8x the tokens; update ~8x rollouts x ~4x length
        gen = sum(j["gen_s"] for j in steps) / len(steps)
        upd = sum(j["step_s"] - j["gen_s"] for j in steps) / len(steps)
        real = gen * 64 + upd * 32
        res["crude_real_config_hf_step_s"] = round(real)
        res["crude_real_config_hf_steps_in_3600s"] = round(3600 / real, 1)
    res["validate"], res["validate_wall_s"], res["peak_gpu_mem_used_gib_validate"] = final_line(
        work, stages, "grpo_validate")
    return res


def cmd_summarize(work: str, out_json: str) -> None:
    wd = Path(work)
    stages = stage_table(wd)
    env = [j for j in json_lines(read_log(wd, "env")) if j.get("event") == "gpu_check_env"]
    summary = {"dryrun": os.environ.get("GPU_CHECK_CPU_DRYRUN") == "1", "env": env[-1] if env else None,
               "stages": stages}
    for name, fn in (("nanogpt", summarize_nanogpt), ("grpo_math", summarize_grpo)):
        try:
            summary[name] = fn(wd, stages)
        except Exception as exc:  # a parse error must not lose the other figures
            summary[name] = {"summary_error": repr(exc)}
    tmp = f"{out_json}.{os.getpid()}.tmp"  # the build stage may summarize at the same time
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, out_json)
    if os.environ.get("GPU_CHECK_QUIET") != "1":
        print_summary(summary)


def print_summary(s: dict) -> None:
    print("=" * 30, "gpu_check summary", "=" * 30)
    env = s.get("env") or {}
    print(f"env: {env.get('gpu')} ({env.get('gpu_mem_gib')} GiB) torch {env.get('torch')} "
          f"transformers {env.get('transformers')} math_verify {env.get('math_verify')} vllm {env.get('vllm')}")
    for name, st in s["stages"].items():
        print(f"  stage {name:16s} {st['status']:8s} rc={st['rc']:4s} {st['wall_s']:6.1f}s (limit {st['timeout_s']})")
    ng = s.get("nanogpt", {})
    ex = ng.get("extrapolation_8gpu_linear", {})
    print(f"nanogpt: startup {ng.get('startup_s')}s, compile+warm-up {ng.get('compile_warmup_s')}s, "
          f"{ng.get('ms_per_step')} ms/step = {ng.get('tokens_per_s_1gpu')} tok/s on 1 GPU; "
          f"{ng.get('steps_done')} steps in {ng.get('train_s')}s; loss {ng.get('first_loss')} -> "
          f"{ng.get('last_logged_loss')}; peak GPU mem (nvidia-smi) {ng.get('peak_gpu_mem_used_gib_train')} GiB")
    print(f"  x8 linear: {ex.get('tokens_per_s')} tok/s -> "
          f"num_iterations for 1500 s = {ex.get('implied_num_iterations_1500s')} "
          f"(configured {ex.get('configured_num_iterations')})")
    print(f"  eval: {ng.get('eval')} in {ng.get('eval_wall_s')}s")
    gr = s.get("grpo_math", {})
    print(f"grpo_math: build {(gr.get('build') or {}).get('total_s')}s, "
          f"setup {(gr.get('start') or {}).get('setup_s')}s, "
          f"device {(gr.get('start') or {}).get('device')}, vllm {(gr.get('start') or {}).get('vllm')}")
    for st in gr.get("steps") or []:
        print(f"  step {st['step']}: gen {st['gen_s']}s, update+save {st['update_and_save_s']}s, total {st['step_s']}s")
    print(f"  torch memory {gr.get('torch_memory')}; nvidia-smi peak {gr.get('peak_gpu_mem_used_gib_train')} GiB")
    print(f"  checkpoints: {gr.get('checkpoints')}")
    print(f"  crude real-config HF step {gr.get('crude_real_config_hf_step_s')}s "
          f"-> {gr.get('crude_real_config_hf_steps_in_3600s')} steps in 3600 s")
    print(f"  validate: {gr.get('validate')} in {gr.get('validate_wall_s')}s")
    print("=" * 79, flush=True)


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "env":
        cmd_env()
    elif cmd == "tee":
        cmd_tee(*args)
    elif cmd == "build-grpo":
        cmd_build_grpo(args[0], tiny="--tiny" in args)
    elif cmd == "summarize":
        cmd_summarize(*args)
    else:
        sys.exit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    main()
