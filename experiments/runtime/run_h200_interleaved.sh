#!/usr/bin/env bash
# Interleaved 1F1B against 1F1B on the same two chips: one H200 split by CUDA MPS into clients
# of 50 and 30 % of its SMs (both clean in the GEMM fault probe at the GPT's shapes,
# README.md "Results (2026-12-02)"), the GPT of mix_models.sh (20 blocks, hidden 3072, 2.57 B
# parameters), sequence 2048, batch 16 of micro-batches of 1. End to end in one go:
#   1. the GEMM fault check (mps_gemm_probe.py with the model's own Linear shapes) in both
#      clients at once; a share that faults stops the script (probe_verdict.py);
#   2. the chip and cluster files (mps_chips.py), chip benchmark (--write-chip) and layer
#      profiles of both clients, measured while both run;
#   3. the plan searched with those profiles under `--schedule 1f1b` and under `--schedule
#      interleaved-1f1b` (the same devices and units per rank, in chunks; if that search keeps
#      no plan, interleave_of.py chunks the 1F1B plan's ranks and `evaluate` re-costs it);
#   4. both trained for 8 steps by `autosplit run --device cuda --backend gloo` (the CPU relay:
#      NCCL cannot run two ranks on one GPU), each rank at its chip's SM share;
#   5. `autosplit validate` of both, and the table of analyse_runs.py.
# Everything lands in $OUT/interleaved-50-30-gpt and one archive $OUT/interleaved-50-30-gpt.tgz
# (nothing is written into the checkout). Every step has a time limit and a run that would
# start after 330 s is skipped, so the script stays under 9 minutes.
#
#   OUT=/tmp/out bash experiments/runtime/run_h200_interleaved.sh
#   OUT=/tmp/out DRY_RUN=1 bash experiments/runtime/run_h200_interleaved.sh  # CPU, tiny model
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
DRY=${DRY_RUN:-0}
SHARES=(50 30)
SEQ=2048 BATCH=16 MICRO=1 STEPS=8 WARMUP=3
HERE=experiments/runtime
source $HERE/mix_models.sh
model_setup gpt
MODEL=$MODEL_FILE
read -r -a WORDS <<< "$DEFAULT_ARGS"
TAG=interleaved-50-30-gpt
R=$OUT/$TAG
SUFFIX=ilv
if [ "$DRY" = 1 ]; then
  # A tiny GPT of 8 blocks: enough units for two chunks on each rank however the CPU clients'
  # profiles split them.
  read -r -a WORDS <<< "$TINY_ARGS layers=8"
  SEQ=32 DEVICE=cpu DTYPE=fp32 STEPS=3 WARMUP=1 REPEATS=1 BACKEND=()
  LAST_RUN_BEFORE_S=${LAST_RUN_BEFORE_S:-100000}
else
  DEVICE=cuda DTYPE=bf16 REPEATS=5 BACKEND=(--backend gloo)
fi
ARGS=()
for w in "${WORDS[@]}"; do ARGS+=(-a "$w"); done
mkdir -p "$R/profiles" || { echo "error: cannot create $R" >&2; exit 2; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=${AUTOSPLIT_CACHE_DIR:-/tmp/autosplit-cache}
# The run's chips and layer profiles live in the output folder and override the shipped ones.
export AUTOSPLIT_PROFILES=$R/profiles AUTOSPLIT_CHIP_PATH=$R/profiles
A="python3 -m autosplit"
LOG=$R/run.log
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
stamp "$TAG: shares ${SHARES[*]}, $MODEL ${WORDS[*]}, seq $SEQ, batch $BATCH, micro $MICRO"
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv
  python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$R/env.txt" 2>&1
archive() { tar czf "$OUT/$TAG.tgz" -C "$OUT" "$TAG"; }
trap archive EXIT

if [ "$DRY" != 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d
  trap 'echo quit | nvidia-cuda-mps-control; archive' EXIT
fi

# ---- 1. GEMM fault check, both shares at once, the model's shapes ----------------------------
if [ "$DRY" != 1 ]; then
  pids=()
  for p in "${SHARES[@]}"; do
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p timeout 90 python3 $HERE/mps_gemm_probe.py \
      "${TAG}_$p" $(( MICRO * SEQ )) --model $MODEL "${ARGS[@]}" >> "$R/probe.jsonl" 2>> "$LOG" &
    pids+=($!)
  done
  wait "${pids[@]}"
  python3 $HERE/probe_verdict.py "$R/probe.jsonl" "${SHARES[@]}" 2>&1 | tee -a "$LOG"
  verdict=${PIPESTATUS[0]}
  [ "$verdict" = 0 ] || { stamp "stopped: a share faults (probe.jsonl)"; exit "$verdict"; }
  stamp "probe done: both shares clean"
fi

# ---- 2. chips, cluster and layer profiles, both clients at once -------------------------------
python3 $HERE/mps_chips.py trio --out "$R" --suffix $SUFFIX --shares "${SHARES[@]}" || exit 2
for p in "${SHARES[@]}"; do
  chip=h200-mps$p-$SUFFIX
  mkdir -p "$R/profiles/$chip/measured"
  cp "$R/chips/$chip/chip.yaml" "$R/profiles/$chip/chip.yaml"
done
client() {  # $1 = this client's SM share
  local p=$1 chip=h200-mps$1-$SUFFIX o
  ( export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p
    timeout 120 $A profile-chip --device $DEVICE --chip $chip --repeats $REPEATS --warmup 1 \
      -o "$R/profiles/$chip/measured/chip-bench.csv" --write-chip \
      --chip-file "$R/profiles/$chip/chip.yaml"
    timeout 150 $A profile $MODEL "${ARGS[@]}" --seq-len $SEQ --dtype $DTYPE --micro-batch $MICRO \
      --device $DEVICE --repeats $REPEATS --warmup 2 --chip $chip \
      -o "$R/profiles/$chip/measured/$TAG.csv"
    touch "$R/done$p"
    if [ "$DRY" != 1 ]; then  # keep the GPU as loaded until the other client is done
      for o in "${SHARES[@]}"; do
        [ -f "$R/done$o" ] || python3 experiments/profiling/gpu_load.py "$R/done$o"
      done
    fi
  ) > "$R/profile$p.log" 2>&1
}
rm -f "$R"/done*
pids=()
for p in "${SHARES[@]}"; do client "$p" & pids+=($!); done
wait "${pids[@]}"
grep -h "wrote calibrated\|rows to" "$R"/profile*.log >> "$LOG"
for p in "${SHARES[@]}"; do
  [ -s "$R/profiles/h200-mps$p-$SUFFIX/measured/$TAG.csv" ] \
    || { stamp "stopped: no layer profile of the $p % client (profile$p.log)"; exit 1; }
done
stamp "profiles done"

# ---- 3. the two plans: 1F1B, and interleaved 1F1B on the same devices ------------------------
search() {  # $1 = schedule
  timeout 150 $A search $MODEL "${ARGS[@]}" --seq-len $SEQ --dtype $DTYPE -c "$R/cluster.yaml" \
    -b $BATCH --schedule "$1" --tp 1 --no-idle --micro-batch-sizes $MICRO -q \
    -o "$R/plan_$1.json" >> "$LOG" 2>&1
}
search 1f1b || { stamp "search under 1f1b failed"; exit 1; }
if ! search interleaved-1f1b; then
  # The search keeps each rank's units and deals them out in chunks; when no chunking of its
  # finalists fits, the 1F1B plan's own ranks are chunked and re-costed.
  stamp "search under interleaved-1f1b kept no plan: the 1F1B plan's units in two chunks"
  python3 $HERE/interleave_of.py "$R/plan_1f1b.json" "$R/plan_interleaved-1f1b.json" >> "$LOG" 2>&1 \
    && $A evaluate "$R/plan_interleaved-1f1b.json" -o "$R/plan_interleaved-1f1b.json" >> "$LOG" 2>&1 \
    || { stamp "no interleaved plan"; exit 1; }
fi
for s in interleaved-1f1b 1f1b; do
  python3 -c "import json, sys; p = json.load(open(sys.argv[1])); print(sys.argv[2], \
'schedule', p['schedule'], 'virtual_stages', p.get('virtual_stages', 1), 'stages', \
[(s['layer_start'], s['layer_end'], s.get('rank', s['index'])) for s in p['stages']], \
'predicted iteration s', p['prediction']['iteration_s'])" "$R/plan_$s.json" "$s" | tee -a "$LOG"
done
stamp "plans done"

# ---- 4, 5. runs and validation --------------------------------------------------------------
run_plan() {  # $1 = plan name
  local plan="$R/plan_$1.json" envs=""
  if [ $(( $(date +%s) - T0 )) -gt "${LAST_RUN_BEFORE_S:-330}" ]; then
    stamp "$1 skipped: past ${LAST_RUN_BEFORE_S:-330} s, it would not finish within 9 minutes"
    return
  fi
  [ "$DRY" != 1 ] && envs=$(python3 $HERE/mps_rank_env.py --with-devices "$plan")
  # shellcheck disable=SC2086
  timeout 170 $A run "$plan" $MODEL --device $DEVICE "${BACKEND[@]}" $envs --steps $STEPS \
    --warmup $WARMUP --timeout 150 -o "$R/measured_$1.json" >> "$LOG" 2>&1 \
    || echo "== $1 failed" >> "$LOG"
  $A validate "$plan" "$R/measured_$1.json" -o "$R/validation_$1.json" >> "$LOG" 2>&1 \
    || echo "== validation of $1 failed" >> "$LOG"
  stamp "$1 done"
}
run_plan interleaved-1f1b
run_plan 1f1b
python3 $HERE/analyse_runs.py "$R" > "$R/table.md" 2>> "$LOG" && cat "$R/table.md"
grep -E "median step|iteration:|failed|Error|not finite|GEMM self-check|bad" "$LOG"
