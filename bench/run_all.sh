#!/usr/bin/env bash
# Run the eight benchmarks on the dev SLURM cluster and rewrite bench/RESULTS.md (about 25 minutes here).
#
#   bash bench/run_all.sh                  # all eight
#   BENCH_OUT=DIR bash bench/run_all.sh polling   # rerun some into DIR; RESULTS.md gets every report in DIR
#
# Each benchmark prints its table and writes JSON to $BENCH_OUT (default: a fresh temp folder); a benchmark
# that fails is recorded in RESULTS.md as "did not finish" with the tail of its output, and the others go on.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PY=${PYTHON:-$REPO/.venv/bin/python}
OUT=${BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/bench-results.XXXXXX")}
LIMIT_S=${BENCH_LIMIT_S:-600}
# makespan first: it needs the cluster's slots to itself, before the others queue held jobs
ALL=(makespan submit polling collect daemon_idle implementer confine certify)
NAMES=("${@:-${ALL[@]}}")

if [[ ! -x $PY ]]; then
  echo "run_all: no Python at $PY (create the venv, or set PYTHON=/path/to/python)" >&2
  exit 1
fi
if ! sinfo -h >/dev/null 2>&1; then
  echo "run_all: no SLURM cluster answers (start the dev cluster: bash slurm/dev-cluster.sh start)" >&2
  exit 1
fi
mkdir -p "$OUT"
start=$(date +%s)
for name in "${NAMES[@]}"; do
  echo "=== $name ($(date +%H:%M:%S))"
  limit=$LIMIT_S
  [[ $name == certify ]] && limit=${BENCH_CERTIFY_LIMIT_S:-1800}   # a real search: ~30 tiny_lm runs, 2 at a time
  timeout "$limit" "$PY" "$HERE/$name.py" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]]; then
    "$PY" - "$OUT/$name.json" "$name" "$rc" "$OUT/$name.log" <<'PY'
import json, sys
path, name, rc, log = sys.argv[1:]
tail = open(log, errors="replace").read()[-600:]
json.dump({"name": name, "title": "", "rows": [], "error": f"exit code {rc}; output ends: {tail}"}, open(path, "w"))
PY
  fi
done
reports=()   # every report in $OUT: a rerun of some benchmarks into the same BENCH_OUT updates only those
for name in "${ALL[@]}"; do [[ -f $OUT/$name.json ]] && reports+=("$OUT/$name.json"); done
"$PY" "$HERE/report.py" "${reports[@]}" --out "$HERE/RESULTS.md" >/dev/null
echo "=== done in $(( $(date +%s) - start )) s; JSON and logs in $OUT; wrote $HERE/RESULTS.md"
