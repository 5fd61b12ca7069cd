"""
Download the GPT-2-tokenised FineWeb-10B shards into the nanogpt environment's data dir (run once, by hand).

Usage (on a machine with internet access and `pip install huggingface_hub`; the toolkit runs the first form
itself, from the run's snapshot, when a search starts on data that was never prepared):
    python prepare.py --out ~/.cache/toolkit/data/nanogpt --hidden-out ~/.cache/toolkit/data/nanogpt.hidden
    python prepare.py --out /shared/data/nanogpt --hidden-out /shared/data/nanogpt.hidden --train-shards 50

The train shards go to --out (training may read it); the val shard goes to --hidden-out, which only the
trusted scorer is given (a val shard found in --out from an older layout is moved there).

Fetches fineweb_val_000000.bin and fineweb_train_000001.bin ... from the Hugging Face dataset repo
kjj0/fineweb10B-gpt2 (the shards modded-nanogpt's speedrun uses): llm.c format, a 256 x int32 header
(magic 20240520, version 1, token count) then uint16 GPT-2 ids, 100M tokens per train shard (eval.py scores
the first 10,485,760 tokens of the val shard). Shards already present and intact are skipped;
hf_hub_download writes each file under a temporary name before moving it into place, and every file is
checked (header and size) afterwards. Point the toolkit's data_dir (TOOLKIT_DATA_DIR) at --out.

The baseline reads what it trains on in its 25 minutes, roughly 17,700 steps x 262,144 tokens = 4.6B tokens
(47 shards) on 8 x H100 (its num_iterations, 26,880 steps = 7.0B tokens, is never reached); a faster recipe
reads more, and the training loader wraps around to the first shard when it runs out.
"""
import argparse
import os

import numpy as np

REPO_ID = "kjj0/fineweb10B-gpt2"
MAGIC, VERSION, HEADER_BYTES = 20240520, 1, 256 * 4


VAL_NAME = "fineweb_val_000000.bin"


def shard_names(train_shards):
    return [VAL_NAME] + [f"fineweb_train_{i:06d}.bin" for i in range(1, train_shards + 1)]


def shard_problem(path):
    """'' if path is a complete llm.c shard, else what is wrong with it."""
    if not os.path.exists(path):
        return "missing"
    header = np.fromfile(path, dtype=np.int32, count=256)
    if len(header) < 256 or header[0] != MAGIC or header[1] != VERSION:
        return "bad header"
    expected = HEADER_BYTES + 2 * int(header[2])
    size = os.path.getsize(path)
    return "" if size == expected else f"{size} bytes, header implies {expected}"


def download(name, out_dir, repo_id):
    from huggingface_hub import hf_hub_download  # imported here so --help works without it
    hf_hub_download(repo_id=repo_id, filename=name, repo_type="dataset", local_dir=out_dir)
    problem = shard_problem(os.path.join(out_dir, name))
    if problem:
        raise SystemExit(f"prepare: {os.path.join(out_dir, name)} is not a valid shard after download: "
                         f"{problem}; delete it and run again")


def main():
    parser = argparse.ArgumentParser(description="Download FineWeb-10B GPT-2 token shards for envs/nanogpt.")
    parser.add_argument("--out", required=True, help="the data dir (the toolkit's TOOLKIT_DATA_DIR)")
    parser.add_argument("--hidden-out", default=None, help="the val shard's dir (TOOLKIT_HIDDEN_DIR; default --out)")
    parser.add_argument("--train-shards", type=int, default=103, help="train shards of 100M tokens (max 103)")
    parser.add_argument("--repo", default=REPO_ID, help="Hugging Face dataset repo holding the shards")
    args = parser.parse_args()
    out_dir = os.path.expanduser(args.out)
    hidden_dir = os.path.expanduser(args.hidden_out or args.out)
    for folder in (out_dir, hidden_dir):
        os.makedirs(folder, exist_ok=True)
    old_val = os.path.join(out_dir, VAL_NAME)
    if hidden_dir != out_dir and os.path.exists(old_val):
        os.replace(old_val, os.path.join(hidden_dir, VAL_NAME))  # training must not be able to read it
    for name in shard_names(args.train_shards):
        folder = hidden_dir if name == VAL_NAME else out_dir
        path = os.path.join(folder, name)
        if shard_problem(path) == "":
            print(f"{name}: present")
            continue
        if os.path.exists(path):
            os.remove(path)  # a damaged copy: fetch it again
        download(name, folder, args.repo)
        print(f"{name}: downloaded")
    print(f"prepare: {args.train_shards} train shards in {out_dir}, the val shard in {hidden_dir}")


if __name__ == "__main__":
    main()
