#!/usr/bin/env bash
# LOCKED: how every candidate's training is launched (the toolkit runs `bash run.sh` in the candidate's copy).
#   real run : torchrun on ${NPROC:-8} GPUs of one node; train.py reads the shards in $TOOLKIT_DATA_DIR
#   smoke run: TOOLKIT_SMOKE=1 -> synthetic shards in $TOOLKIT_DATA_DIR/smoke (made once, atomically,
#              so a candidate needs no preparation), then plain python on the CPU
set -euo pipefail
cd "$(dirname "$0")"
if [[ "${TOOLKIT_SMOKE:-0}" == "1" ]]; then
    python synthetic_data.py --out "${TOOLKIT_DATA_DIR:?TOOLKIT_DATA_DIR is not set}/smoke" --vocab 1024
    exec python train.py
fi
exec torchrun --standalone --nproc_per_node="${NPROC:-8}" train.py
