"""
One-time data preparation for the grpo_math environment (run on the cluster, with internet).

    cd envs/grpo_math && python prepare.py --out "$TOOLKIT_DATA_DIR" --hidden-out "$TOOLKIT_HIDDEN_DIR"
(the toolkit runs this itself, from the run's snapshot, when a search starts on unprepared data)

Writes, under --out (default $TOOLKIT_DATA_DIR, else ~/.cache/toolkit/data/grpo_math):
    train.jsonl  the 7,500 MATH training problems (EleutherAI/hendrycks_math, all 7 subjects), answer = the
                 last \\boxed{...} of the reference solution
    val.jsonl    the 500 MATH-500 problems (HuggingFaceH4/MATH-500), with their reference answers
    model/       a snapshot of Qwen/Qwen2.5-Math-1.5B (config, tokenizer, safetensors weights)
Each JSONL row has "problem" and "answer" plus provenance fields. Files are written to a temporary name and
renamed, then made read-only. It ends by printing GRPO_EVAL_FINGERPRINT: pin it in env.yaml's env_vars so
the locked evaluation refuses a validation set or base model that was altered after preparation.

Needs: pip install datasets huggingface_hub (and HF_TOKEN if your mirror requires one).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import stat
from pathlib import Path

MATH_TRAIN = "EleutherAI/hendrycks_math"
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
MATH_500 = "HuggingFaceH4/MATH-500"
MODEL = "Qwen/Qwen2.5-Math-1.5B"
HERE = Path(__file__).resolve().parent


def last_boxed(solution: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces matched; None if there is none."""
    start = max(solution.rfind("\\boxed"), solution.rfind("\\fbox"))
    if start < 0:
        return None
    keyword = "\\boxed" if solution.startswith("\\boxed", start) else "\\fbox"
    rest = solution[start + len(keyword):].lstrip()
    if not rest.startswith("{"):  # "\\boxed 5$": the answer runs to the closing $
        return rest.split("$")[0].strip() or None
    open_at = solution.index("{", start)
    depth = 0
    for i in range(open_at, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        if depth == 0:
            return solution[open_at + 1:i].strip()
    return None


def math_train_rows() -> list[dict]:
    from datasets import load_dataset

    rows = []
    for subject in MATH_SUBJECTS:
        for i, ex in enumerate(load_dataset(MATH_TRAIN, subject, split="train")):
            answer = last_boxed(ex["solution"])
            if answer:
                rows.append({"problem": ex["problem"], "answer": answer, "level": ex["level"],
                             "subject": ex["type"], "id": f"train/{subject}/{i}"})
    return rows


def math500_rows() -> list[dict]:
    from datasets import load_dataset

    return [{"problem": ex["problem"], "answer": ex["answer"], "level": ex["level"], "subject": ex["subject"],
             "id": ex["unique_id"]} for ex in load_dataset(MATH_500, split="test")]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)


def download_model(dest: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=MODEL, local_dir=str(dest),
                      allow_patterns=["*.json", "*.safetensors", "*.txt"])


def make_read_only(root: Path) -> None:
    # a run executes as the same user and could chmod back: this stops accidents, the fingerprint the rest
    for path in [root / "train.jsonl", *(root / "model").rglob("*")]:
        if path.is_file():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def fingerprint(root: Path, hidden: Path) -> str:
    # the same function the locked eval checks against (code/data.py), loaded by path
    spec = importlib.util.spec_from_file_location("grpo_math_data", HERE / "code" / "data.py")
    data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data)
    return data.fingerprint(root, hidden)


def main() -> None:
    default = os.environ.get("TOOLKIT_DATA_DIR") or str(Path.home() / ".cache/toolkit/data/grpo_math")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=default, help="data directory (the jobs' TOOLKIT_DATA_DIR)")
    parser.add_argument("--hidden-out", default=None,
                        help="the validation set's directory (TOOLKIT_HIDDEN_DIR; default: --out + '.hidden')")
    parser.add_argument("--skip-model", action="store_true", help="only the problems, not the model snapshot")
    args = parser.parse_args()
    out = Path(args.out).expanduser()
    hidden = Path(args.hidden_out).expanduser() if args.hidden_out else out.with_name(out.name + ".hidden")
    for folder in (out, hidden):
        folder.mkdir(parents=True, exist_ok=True)
    (out / "val.jsonl").unlink(missing_ok=True)  # an older layout kept it where training could read it
    train, val = math_train_rows(), math500_rows()
    val_problems = {r["problem"].strip() for r in val}
    train = [r for r in train if r["problem"].strip() not in val_problems]  # MATH-500 comes from MATH test
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(hidden / "val.jsonl", val)
    print(f"train: {len(train)} problems -> {out}; val: {len(val)} problems -> {hidden}")
    if not args.skip_model:
        download_model(out / "model")
        print(f"model: {MODEL} -> {out / 'model'}")
    make_read_only(out)
    print("Pin this in envs/grpo_math/env.yaml (env_vars), so the eval refuses altered data:")
    print(f'  GRPO_EVAL_FINGERPRINT: "{fingerprint(out, hidden)}"')


if __name__ == "__main__":
    main()
