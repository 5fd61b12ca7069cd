#!/usr/bin/env bash
# One short check of both environments on a single lent GPU (H100 / H200), run from the repo root:
#     bash bench/gpu_check.sh                                  # on the GPU machine, OUT=<dir> set
#     GPU_CHECK_CPU_DRYRUN=1 bash bench/gpu_check.sh           # here, on a CPU: tiny sizes, same paths
#
#   1. nanogpt, the real config (GPT-2 124M, bf16 autocast, torch.compile, fused AdamW) through the locked
#      launchers (NPROC=1 bash run.sh, then bash eval.sh) in a copy of envs/nanogpt/code whose train.py only gets
#      train_budget_s = 60 and log_every = 10, on synthetic GPT-2-vocab shards (the full 10,485,761 val tokens);
#   2. grpo_math on the GPU path without vLLM (HF generate) at the real model size: a random Qwen2.5-Math-1.5B
#      (its config, bf16 safetensors) with a Qwen-sized offline tokenizer and arithmetic problems, laid out as
#      prepare.py would; train.py in a copy with n_grpo_steps = 3, n_prompts_per_step = 16,
#      sampling_max_tokens = 128, eval_every = 1; then the locked validate.py on the last checkpoint.
# Every stage runs under `timeout`, capped by a global deadline (GPU_CHECK_BUDGET_S, default 345 s) that keeps
# time back for the later stages; $OUT/gpu_check.json is rewritten after every stage, so whatever finished is
# reported even if the machine is taken away. $OUT/gpu_check.log has every line, timestamped per stage.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=${GPU_CHECK_CPU_DRYRUN:-0}
OUT=${OUT:-/tmp/gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
BUDGET_S=${GPU_CHECK_BUDGET_S:-345}
MIN_STAGE_S=20                         # a stage with less time than this is skipped, not started
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/gpu_check.json
NG=$WORK/nanogpt NG_DATA=$WORK/nanogpt_data GR=$WORK/grpo GR_DATA=$WORK/grpo_data
T_START=$EPOCHREALTIME
DEADLINE=$(( ${T_START%.*} + BUDGET_S ))
rm -rf "$WORK" && mkdir -p "$WORK/logs" "$WORK/bin" "$OUT"
: > "$LOG"
export REPO DRY OUT WORK LOG NG NG_DATA GR GR_DATA
# the check never runs the smoke paths: those switches must not leak in from the caller
unset TOOLKIT_SMOKE TOOLKIT_QUICK_CHECK TOOLKIT_SCRATCH GRPO_EVAL_FINGERPRINT

say() { echo "### $*" | tee -a "$LOG"; }

# --- Python packages the machine lacks (math-verify and its deps) travel as wheels in .whl/ -------------------
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || python3 -c "import glob, zipfile; [zipfile.ZipFile(w).extractall('/tmp/site') for w in glob.glob('.whl/*.whl')]" \
        || say "wheel install failed"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# run.sh / eval.sh call `torchrun`; if the machine has no such script on PATH, the same launcher via python3
if ! command -v torchrun > /dev/null; then
    printf '#!/bin/sh\nexec python3 -m torch.distributed.run "$@"\n' > "$WORK/bin/torchrun"
    chmod +x "$WORK/bin/torchrun"
fi
command -v python > /dev/null || ln -s "$(command -v python3)" "$WORK/bin/python"
export PATH=$WORK/bin:$PATH

# --- stage machinery -------------------------------------------------------------------------------------------
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/stages.tsv"; }
summarize() { GPU_CHECK_QUIET=1 python3 bench/gpu_check.py summarize "$WORK" "$SUMMARY" > /dev/null 2>&1 || true; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# run_stage NAME CAP_S RESERVE_S FUNCTION [nomon]: FUNCTION (exported below) under `timeout`, limited to CAP_S and
# to the time left before the deadline minus RESERVE_S (kept for the stages after it; scaled when the budget is
# not the default 345 s). Output goes through the timestamping tee into the logs only (stdout stays short: the
# stage lines, a failing stage's last lines, the summary); nvidia-smi samples the GPU's memory meanwhile.
run_stage() {
    local name=$1 cap=$2 reserve=$(( $3 * BUDGET_S / 345 )) fn=$4 mon="" t0 rc left lim
    left=$(( DEADLINE - ${EPOCHREALTIME%.*} - reserve ))
    lim=$(( cap < left ? cap : left ))
    if (( lim < MIN_STAGE_S )); then
        say "$name: SKIPPED (only ${lim}s left of the ${BUDGET_S}s budget)"
        record "$name" skip 0 "$lim"; summarize; return 1
    fi
    say "$name: start (limit ${lim}s)"
    if [[ $DRY != 1 && ${5:-} != nomon ]] && command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$WORK/mem_$name.csv" 2> /dev/null &
        mon=$!
    fi
    t0=$EPOCHREALTIME
    STAGE_LIMIT_S=$lim timeout -k 10 "$lim" bash -c "$fn" 2>&1 | python3 bench/gpu_check.py tee "$name" "$WORK" "$LOG" > /dev/null
    rc=${PIPESTATUS[0]}
    if [[ -n $mon ]]; then kill "$mon" 2> /dev/null; wait "$mon" 2> /dev/null; fi
    record "$name" "$rc" "$(since "$t0")" "$lim"
    summarize
    say "$name: rc=$rc after $(since "$t0")s$( ((rc == 124)) && echo ' (TIMEOUT)')"
    if ((rc != 0)); then tail -n 25 "$WORK/logs/$name.log" | sed "s/^/    /" | tee -a "$LOG"; fi
    return "$rc"
}

# --- stages (each runs in its own bash under timeout, so they are exported functions) ----------------------------
stage_env() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2> /dev/null || echo "no nvidia-smi"
    echo "torchrun: $(command -v torchrun)  python3: $(command -v python3)  PYTHONPATH=${PYTHONPATH:-}"
    python3 bench/gpu_check.py env
}

stage_prep() {  # copies of the two codebases with the few hyper-parameters changed by sed, and the nanogpt shards
    set -e
    cp -r "$REPO/envs/nanogpt/code" "$NG"
    sed -i -E 's/^train_budget_s = 1500\.0$/train_budget_s = 60.0/; s/^log_every = 100$/log_every = 10/' "$NG/train.py"
    grep -qx 'train_budget_s = 60.0' "$NG/train.py"
    grep -qx 'log_every = 10' "$NG/train.py"
    if [[ $DRY == 1 ]]; then  # CPU: a tiny model, no compile, few val tokens (the copy only; paths unchanged)
        sed -i -E 's/^n_layer = 12$/n_layer = 2/; s/^n_head = 12$/n_head = 2/; s/^n_embd = 768$/n_embd = 64/;
                   s/^batch_size = 32 .*/batch_size = 2/; s/^total_batch_size = 262_144 .*/total_batch_size = 4096/;
                   s/^compile_model = True .*/compile_model = False/; s/^train_budget_s = 60.0$/train_budget_s = 8.0/' \
            "$NG/train.py"
        sed -i -E 's/^VAL_TOKENS = 10_485_760 .*/VAL_TOKENS = 16_384/; s/^BATCH_SIZE = 16 .*/BATCH_SIZE = 4/' "$NG/eval.py"
        grep -qx 'VAL_TOKENS = 16_384' "$NG/eval.py"
    fi
    echo "nanogpt train.py changes:"; diff "$REPO/envs/nanogpt/code/train.py" "$NG/train.py" || true

    cp -r "$REPO/envs/grpo_math/code" "$GR"
    sed -i -E 's/^n_grpo_steps = 20$/n_grpo_steps = 3/; s/^n_prompts_per_step = 128 /n_prompts_per_step = 16 /;
               s/^sampling_max_tokens = 1024$/sampling_max_tokens = 128/; s/^eval_every = 2 /eval_every = 1 /' \
        "$GR/train.py"
    for want in '^n_grpo_steps = 3$' '^n_prompts_per_step = 16 ' '^sampling_max_tokens = 128$' '^eval_every = 1 '; do
        grep -q "$want" "$GR/train.py" || { echo "sed did not apply: $want"; exit 1; }
    done
    echo "grpo_math train.py changes:"; diff "$REPO/envs/grpo_math/code/train.py" "$GR/train.py" || true

    # GPT-2-vocab Markov shards: the full eval's 10,485,761 val tokens, 2 x 5M train tokens (the loader wraps)
    (cd "$NG" && python3 synthetic_data.py --out "$NG_DATA" --val-tokens 10485761 --train-shards 2 --shard-tokens 5000000)
}

stage_nanogpt_train() {
    cd "$NG" && NPROC=1 OMP_NUM_THREADS=8 PYTHONUNBUFFERED=1 TOOLKIT_DATA_DIR=$NG_DATA bash run.sh
}

stage_nanogpt_eval() {
    [[ -f $NG/ckpt.pt ]] || { echo "no ckpt.pt: train did not finish"; exit 3; }
    cd "$NG" && NPROC=1 OMP_NUM_THREADS=8 PYTHONUNBUFFERED=1 TOOLKIT_DATA_DIR=$NG_DATA bash eval.sh
}

stage_grpo_build() {  # mostly CPU work; the random init takes the GPU for a second or so (see build-grpo)
    python3 "$REPO/bench/gpu_check.py" build-grpo "$GR_DATA" $([[ $DRY == 1 ]] && echo --tiny)
}

# train.py through runpy, so the peak torch memory can be printed afterwards (also on SIGTERM from timeout)
GRPO_WRAPPER='
import json, runpy, signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
sys.argv = ["train.py"]
try:
    runpy.run_path("train.py", run_name="__main__")
finally:
    import torch
    if torch.cuda.is_available():
        print(json.dumps({"event": "gpu_check_memory",
                          "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                          "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}), flush=True)
'
stage_grpo_train() {
    [[ -f $GR_DATA/model/model.safetensors ]] || { echo "no model: grpo_build did not finish"; exit 3; }
    # train.py stops before a step that would not fit TRAIN_BUDGET_S (from its start, after the imports): keep
    # it inside this stage's limit, so the budget logic ends the run rather than the kill
    local budget=$(( STAGE_LIMIT_S - 20 < 240 ? STAGE_LIMIT_S - 20 : 240 ))
    echo "TRAIN_BUDGET_S=$budget"
    cd "$GR" && TOOLKIT_DATA_DIR=$GR_DATA TRAIN_BUDGET_S=$budget GRPO_USE_VLLM=0 OMP_NUM_THREADS=8 \
        PYTHONUNBUFFERED=1 python3 -c "$GRPO_WRAPPER"
}

stage_grpo_validate() {
    # the locked eval generates 1024 tokens per problem for every checkpoint (HF: one batch for 16 problems), so
    # only the last checkpoint is scored here; the others are moved aside (validate.py scores all it finds)
    local ckpts=("$GR"/checkpoints/step_*)
    [[ -d ${ckpts[-1]} ]] || { echo "no checkpoint to validate"; exit 3; }
    mkdir -p "$WORK/grpo_other_checkpoints"
    for c in "${ckpts[@]:0:${#ckpts[@]}-1}"; do mv "$c" "$WORK/grpo_other_checkpoints/"; done
    echo "validating $(basename "${ckpts[-1]}") on $(wc -l < "$GR_DATA/val.jsonl") problems"
    cd "$GR" && TOOLKIT_DATA_DIR=$GR_DATA GRPO_USE_VLLM=0 GRPO_KEEP_CHECKPOINTS=1 OMP_NUM_THREADS=8 \
        PYTHONUNBUFFERED=1 python3 validate.py
}
export -f stage_env stage_prep stage_nanogpt_train stage_nanogpt_eval stage_grpo_build stage_grpo_train \
    stage_grpo_validate
export GRPO_WRAPPER

# --- the run ---------------------------------------------------------------------------------------------------
# caps (s) and reserves (s kept for the later stages) sum to the ~345 s budget when everything takes its
# expected time: env ~5, prep ~5, nanogpt train ~120 (compile ~45 + 60 budget), eval ~30 (grpo build beside it),
# grpo train ~90 (setup ~20 + 3 steps), validate ~60
say "gpu_check: dryrun=$DRY budget ${BUDGET_S}s, work $WORK, out $OUT"
run_stage env 60 0 stage_env nomon
if [[ $DRY != 1 ]] && ! grep -q '"cuda_available": true' "$WORK/logs/env.log"; then
    say "no CUDA device visible to torch: stopping (use GPU_CHECK_CPU_DRYRUN=1 on a CPU)"
    GPU_CHECK_QUIET=0 python3 bench/gpu_check.py summarize "$WORK" "$SUMMARY"
    exit 1
fi
run_stage prep 60 0 stage_prep nomon || { say "prep failed: nothing else can run"; exit 1; }
ONLY=${GPU_CHECK_ONLY:-all}            # all | grpo (a second try of the grpo stages alone)
[[ $ONLY == grpo ]] || run_stage nanogpt_train 170 150 stage_nanogpt_train
# the grpo data build is mostly CPU work: it runs beside the nanogpt eval (whose nvidia-smi peak may include the
# build's few GiB)
run_stage grpo_build 90 0 stage_grpo_build nomon &
BUILD_PID=$!
if [[ $ONLY == grpo ]]; then
    say "nanogpt: not run (GPU_CHECK_ONLY=grpo)"
elif [[ -f $NG/ckpt.pt ]]; then
    run_stage nanogpt_eval 90 120 stage_nanogpt_eval
else
    say "nanogpt_eval: SKIPPED (no ckpt.pt)"; record nanogpt_eval skip 0 0
fi
wait "$BUILD_PID"
run_stage grpo_train 150 70 stage_grpo_train
ls -d "$GR"/checkpoints/step_* 2> /dev/null | while read -r c; do
    echo "$(basename "$c"):$(du -sh "$c" | cut -f1)"; done > "$WORK/grpo_checkpoints.txt"
say "grpo checkpoints: $(tr '\n' ' ' < "$WORK/grpo_checkpoints.txt")"
if [[ -s $WORK/grpo_checkpoints.txt ]]; then
    run_stage grpo_validate $([[ $ONLY == grpo ]] && echo 150 || echo 90) 0 stage_grpo_validate
else
    say "grpo_validate: SKIPPED (no checkpoint)"; record grpo_validate skip 0 0
fi
record total 0 "$(since "$T_START")" "$BUDGET_S"
python3 bench/gpu_check.py summarize "$WORK" "$SUMMARY" | tee -a "$LOG"
say "done in $(since "$T_START")s; summary $SUMMARY, log $LOG"
