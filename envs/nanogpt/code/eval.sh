#!/usr/bin/env bash
# LOCKED: how the (hidden) evaluation is launched, after run.sh, in the same directory. Its last stdout
# line is the metrics JSON. Same launch rules as run.sh: torchrun on ${NPROC:-8} GPUs, or, with
# TOOLKIT_SMOKE=1, plain python on the CPU over the synthetic shards (made here too if missing).
set -euo pipefail
cd "$(dirname "$0")"
if [[ "${TOOLKIT_SMOKE:-0}" == "1" ]]; then
    python synthetic_data.py --out "${TOOLKIT_DATA_DIR:?TOOLKIT_DATA_DIR is not set}/smoke" --vocab 1024 >&2
    exec python eval.py
fi
exec torchrun --standalone --nproc_per_node="${NPROC:-8}" eval.py
