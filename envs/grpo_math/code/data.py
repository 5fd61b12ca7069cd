"""
Data, model and checkpoint locations for the grpo_math environment.

LOCKED: the search may not change this file (the worker restores a pristine copy
before the evaluation). It fixes where everything lives, so that every candidate
trains on the same problems and starts from the same model:

- real mode (a GPU cluster): `prepare.py` has written, under $TOOLKIT_DATA_DIR,
    train.jsonl   the 7,500 MATH training problems  {"problem", "answer", ...}
    val.jsonl     the 500 MATH-500 test problems (only the locked eval reads it)
    model/        the Qwen2.5-Math-1.5B snapshot (config, tokenizer, weights);
- smoke mode (TOOLKIT_SMOKE=1, any CPU): the same layout under
  $TOOLKIT_DATA_DIR/smoke, generated on first use: arithmetic problems from
  reasoning-gym with fixed seeds (train and val disjoint) and a tiny, randomly
  initialised Qwen2-architecture model with a byte-level tokenizer (no hub);
- checkpoints: train.py saves the policy at every validation point with
  save_checkpoint(); the locked eval scores exactly those weights afterwards.

API: smoke(), data_dir(), model_dir(), load_train_problems(), checkpoint_root(),
checkpoint_dir(step), save_checkpoint(model, step).
`python data.py` builds the smoke data (with TOOLKIT_SMOKE=1) and prints a summary.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

# -----------------------------------------------------------------------------
# fixed constants (changing any of them changes every score)

SMOKE_TRAIN_SIZE = 1000
SMOKE_VAL_SIZE = 32  # small: the eval greedily decodes every val problem at every checkpoint on a CPU
SMOKE_SEEDS = {"train": 1, "val": 2}  # different seeds, and val questions are removed from train below
# short problems (2-3 terms, 1-2 digits) keep the byte-level prompts short on a CPU
SMOKE_TASK = dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)
# the tiny model: ~0.1M parameters, a real Qwen2 architecture so the same code path loads it
SMOKE_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
SMOKE_INIT_SEED = 0
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"
# files that pin what the eval trusts in real mode (see fingerprint())
FINGERPRINT_FILES = ("val.jsonl", "model/config.json", "model/tokenizer.json", "model/tokenizer_config.json")


def smoke() -> bool:
    return os.environ.get("TOOLKIT_SMOKE", "") == "1"


def data_dir() -> Path:
    base = Path(os.environ.get("TOOLKIT_DATA_DIR") or Path.home() / ".cache/toolkit/data/grpo_math")
    if smoke():
        base = base / "smoke"
        ensure_smoke_data(base)
    return base


def model_dir() -> Path:
    return data_dir() / "model"


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python envs/grpo_math/prepare.py` with "
                                "TOOLKIT_DATA_DIR set (or use smoke mode, TOOLKIT_SMOKE=1)")
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_train_problems() -> list[dict]:
    """The training problems: dicts with at least "problem" and "answer" (a LaTeX string)."""
    return read_jsonl(data_dir() / "train.jsonl")


def fingerprint(root: Path) -> str:
    """sha256 over the val set, model config and tokenizer: what the eval trusts besides the weights."""
    h = hashlib.sha256()
    for rel in FINGERPRINT_FILES:
        path = root / rel
        h.update(rel.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"missing") + b"\0")
    return h.hexdigest()


# -----------------------------------------------------------------------------
# checkpoints: the only artefact of a run that the eval uses


def checkpoint_root() -> Path:
    # the worker gives each candidate a scratch dir; run and eval see the same one
    scratch = os.environ.get("TOOLKIT_SCRATCH")
    return Path(scratch) / "checkpoints" if scratch else Path("checkpoints").resolve()


def checkpoint_dir(step: int) -> Path:
    return checkpoint_root() / f"step_{step:04d}"


def save_checkpoint(model, step: int) -> Path:
    """Save the policy weights (safetensors, bf16 on GPU) for the eval; atomic per checkpoint."""
    final = checkpoint_dir(step)
    tmp = final.with_name(f".{final.name}.tmp.{uuid.uuid4().hex[:8]}")
    dtype = model.dtype
    if next(model.parameters()).is_cuda:  # bf16 halves the disk space; vLLM evaluates in bf16 anyway
        import torch
        dtype = torch.bfloat16
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the embedding: stored once
    from safetensors.torch import save_file
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


# -----------------------------------------------------------------------------
# smoke mode: generated problems and a tiny random model, all offline


def smoke_problems(split: str) -> list[dict]:
    """Fixed arithmetic problems from reasoning-gym; train never contains a val question."""
    import reasoning_gym

    def generate(name: str, size: int) -> list[dict]:
        ds = reasoning_gym.create_dataset("basic_arithmetic", size=size, seed=SMOKE_SEEDS[name], **SMOKE_TASK)
        return [{"problem": e["question"], "answer": str(e["answer"])} for e in ds]

    val = generate("val", SMOKE_VAL_SIZE)
    if split == "val":
        return val
    seen = {p["problem"] for p in val}
    return [p for p in generate("train", SMOKE_TRAIN_SIZE) if p["problem"] not in seen]


def smoke_tokenizer():
    """A byte-level tokenizer with no merges: one token per UTF-8 byte, deterministic, no training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS_TOKEN, PAD_TOKEN])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def smoke_model_config(tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SMOKE_MODEL)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def ensure_smoke_data(root: Path) -> None:
    """Build the smoke data dir once; concurrent jobs race on one rename and the loser discards its copy."""
    if (root / "model" / "config.json").is_file():
        return
    import torch
    from transformers import Qwen2ForCausalLM

    tmp = root.with_name(f".{root.name}.tmp.{uuid.uuid4().hex[:8]}")
    (tmp / "model").mkdir(parents=True)
    write_jsonl(tmp / "train.jsonl", smoke_problems("train"))
    write_jsonl(tmp / "val.jsonl", smoke_problems("val"))
    tokenizer = smoke_tokenizer()
    torch.manual_seed(SMOKE_INIT_SEED)
    Qwen2ForCausalLM(smoke_model_config(tokenizer)).save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    try:
        os.rename(tmp, root)  # atomic; fails if another job got there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "model" / "config.json").is_file():
            raise


if __name__ == "__main__":
    problems = load_train_problems()
    print(f"data: {data_dir()}  model: {model_dir()}  train problems: {len(problems)}")
    print("example:", problems[0])
