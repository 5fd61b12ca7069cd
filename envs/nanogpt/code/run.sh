#!/usr/bin/env bash
# LOCKED: how every candidate's training is launched (the toolkit runs `bash run.sh` in the candidate's copy,
# confined: the data dir is read-only, the val shard is not in it).
#   real run : torchrun on ${NPROC:-8} GPUs of one node; train.py reads the shards in $TOOLKIT_DATA_DIR
#   smoke run: TOOLKIT_SMOKE=1 -> plain python on the CPU over the synthetic shards in $TOOLKIT_DATA_DIR/smoke
#              (made by env.yaml's smoke `prepare` before any candidate runs)
set -euo pipefail
cd "$(dirname "$0")"
if [[ "${TOOLKIT_SMOKE:-0}" == "1" ]]; then
    exec python train.py
fi
exec torchrun --standalone --nproc_per_node="${NPROC:-8}" train.py
