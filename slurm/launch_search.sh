#!/bin/bash
# The search daemon as a long, requeueable CPU job:
#   sbatch slurm/launch_search.sh configs/nanogpt.yaml [extra `toolkit evolve` flags, e.g. --partition h100]
# It resumes from the run directory whenever it starts, so preemption, a node failure or the time limit
# cost nothing: 2 minutes before the limit SLURM sends USR1, the daemon stops between ticks, and the job
# requeues itself. TERM (`scancel`) stops the daemon the same clean way and does NOT requeue: a cancelled
# search stays cancelled (rerun the sbatch line to resume it). Progress goes to the log as plain lines.
# Override any #SBATCH line on the command line (sbatch --time=7-0 --partition=cpu ...).
#SBATCH --job-name=toolkit-search
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=toolkit-search-%j.out
#SBATCH --time=2-00:00:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --signal=B:USR1@120
set -uo pipefail
CONFIG=${1:?usage: sbatch slurm/launch_search.sh CONFIG [toolkit evolve flags]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"
TOOLKIT=${TOOLKIT_BIN:-$(command -v toolkit || echo "$PWD/.venv/bin/toolkit")}
echo "$(date -Is) job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $TOOLKIT evolve --config $CONFIG $*"

"$TOOLKIT" evolve --config "$CONFIG" "$@" &
daemon=$!
stop_daemon() {
    kill -TERM "$daemon" 2>/dev/null
    wait "$daemon"
}
requeue() {
    echo "$(date -Is) USR1 (time limit near): stopping the daemon and requeueing (the next start resumes the run)"
    stop_daemon
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}
cancel() {
    echo "$(date -Is) TERM (cancelled): stopping the daemon; not requeueing (rerun the sbatch line to resume)"
    stop_daemon
    exit 0
}
trap requeue USR1
trap cancel TERM
wait "$daemon"
status=$?
echo "$(date -Is) daemon exited with $status"
exit $status
