#!/usr/bin/env bash
# LOCKED: how the (hidden) evaluation is launched, after run.sh. The toolkit runs it from the run's pinned
# snapshot (this directory), never from the candidate's copy; the candidate's directory is $TOOLKIT_CODE_DIR.
# Its last stdout line is the metrics JSON. torchrun on ${NPROC:-8} GPUs, or, with TOOLKIT_SMOKE=1, plain
# python on the CPU.
set -euo pipefail
cd "$(dirname "$0")"
if [[ "${TOOLKIT_SMOKE:-0}" == "1" ]]; then
    exec python eval.py
fi
exec torchrun --standalone --nproc_per_node="${NPROC:-8}" eval.py
