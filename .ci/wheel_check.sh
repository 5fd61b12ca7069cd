#!/usr/bin/env bash
# The package as a lab installs it: build the wheel, install it into a fresh virtual environment outside the
# checkout, `pip check`, then run `toolkit execute --env tiny_lm --smoke` and a short `toolkit evolve` from a
# directory that holds no source tree (templates, environments and configs must come from the wheel).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wheel-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)
"$REPO/.venv/bin/pip" wheel -q --no-deps -w "$WORK/dist" "$REPO"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q torch==2.13.0 "$WORK"/dist/*.whl
"$WORK/venv/bin/pip" check
cd "$WORK"
PY="$WORK/venv/bin/python"
REPLAY=$("$PY" -c 'from toolkit.shipped import shipped; print(shipped("configs") / "replay" / "quickstart.jsonl")')
case "$REPLAY" in "$WORK"/venv/*) ;; *) echo "wheel check: the shipped data was not found in the wheel ($REPLAY)"; exit 1;; esac
printf '{"idea": "Higher peak learning rate: Raise learning_rate from 3e-3 to 6e-3."}\n' > ideas.jsonl
"$WORK/venv/bin/toolkit" execute ideas.jsonl --env tiny_lm --smoke --out run-execute --llm replay --replay "$REPLAY" \
    | tee execute.log
grep -q "execution rate: 100%" execute.log
cat > short.yaml <<YAML
env: tiny_lm
smoke: true
run_dir: run-evolve
llm:
  ideator: {provider: replay, replay_file: $REPLAY, model: replay}
  implementer: {provider: replay, replay_file: $REPLAY, model: replay}
implement: {samples: 1, revisions: 1, workers: 2}
cluster: {cluster: local, poll_s: 1.0}
search: {epochs: 1, ideas_per_epoch: 2, ideas_per_call: 2, certify: {enabled: false}}
YAML
"$WORK/venv/bin/toolkit" evolve --config short.yaml | tee evolve.log
grep -q "search finished" evolve.log
echo "wheel check passed in $(( $(date +%s) - start )) s"
