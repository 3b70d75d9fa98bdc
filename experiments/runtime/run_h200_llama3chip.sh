#!/usr/bin/env bash
# Llama at the TinyLlama-1.1B shape (Zhang et al. 2024, arXiv 2401.02385: 22 layers, hidden
# 2048, 32 heads, 4 key/value heads, SwiGLU 5632; llama.py's vocabulary of 32000), sequence
# 2048, on one H200 split by CUDA MPS into three chips of 50, 33 and 20 % of the SMs, end to
# end in one go:
#   1. the GEMM fault check (mps_gemm_probe.py with the model's own Linear shapes) in all three
#      clients at once: are their bf16 GEMMs correct at these SM shares?
#   2. chip benchmark (--write-chip) and layer profiles of the three clients, measured while all
#      three run (a client that finishes first keeps the GPU busy until the others are done);
#   3. the plan searched with those profiles on llama3chip/cluster.yaml, and the uniform split of
#      the same devices (uniform_of.py);
#   4. both plans trained for 8 steps by `autosplit run --device cuda --backend gloo` (the CPU
#      relay: NCCL cannot run two ranks on one GPU), each rank at its chip's SM share;
#   5. `autosplit validate` of both.
# Everything lands in $OUT/llama3chip (chips and profiles in $OUT/llama3chip/profiles, nothing
# is written into the checkout). About 4 minutes on the H200; every step has a time limit and
# a run that would start after 5 minutes is skipped, so the whole script stays under 8 minutes.
#
#   OUT=/tmp/out bash experiments/runtime/run_h200_llama3chip.sh
#   OUT=/tmp/out DRY_RUN=1 bash experiments/runtime/run_h200_llama3chip.sh  # the CPU, tiny model
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
DRY=${DRY_RUN:-0}
SHARES=(50 33 20)
R=$OUT/llama3chip
mkdir -p "$R/profiles"
HERE=experiments/runtime
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=${AUTOSPLIT_CACHE_DIR:-/tmp/autosplit-cache}
# The run's chips and layer profiles live in the output folder and override the shipped ones.
export AUTOSPLIT_PROFILES=$R/profiles AUTOSPLIT_CHIP_PATH=$R/profiles
A="python3 -m autosplit"
MODEL=experiments/models/llama.py
if [ "$DRY" = 1 ]; then
  ARGS=(-a size=tiny -a hidden=64 -a heads=4 -a kv_heads=2 -a ffn=96 -a vocab=256)
  SEQ=32 DEVICE=cpu STEPS=3 WARMUP=1 REPEATS=1 BACKEND=()
else
  ARGS=(-a size=7b -a layers=22 -a hidden=2048 -a heads=32 -a kv_heads=4 -a ffn=5632)
  SEQ=2048 DEVICE=cuda STEPS=8 WARMUP=3 REPEATS=5 BACKEND=(--backend gloo)
fi
LOG=$R/run.log
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
for p in "${SHARES[@]}"; do
  mkdir -p "$R/profiles/h200-mps$p-trio/measured"
  cp "$HERE/llama3chip/chips/h200-mps$p-trio/chip.yaml" "$R/profiles/h200-mps$p-trio/chip.yaml"
done
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv
  python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$R/env.txt" 2>&1

if [ "$DRY" != 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi

# ---- 1. GEMM fault check, every share at once, the model's shapes -----------------------------
if [ "$DRY" != 1 ]; then
  pids=()
  for p in "${SHARES[@]}"; do
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p timeout 90 python3 $HERE/mps_gemm_probe.py \
      "llama3chip_$p" 2048 \
      --model $MODEL "${ARGS[@]}" >> "$R/probe.jsonl" 2>> "$LOG" & pids+=($!)
  done
  wait "${pids[@]}"
  cat "$R/probe.jsonl" >> "$LOG"
  stamp "probe done"
fi

# ---- 2. chips and layer profiles, all clients at once -------------------------------------------
client() {  # $1 = this client's SM share; the others' follow
  local p=$1 chip=h200-mps$1-trio o
  shift
  ( export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p
    timeout 120 $A profile-chip --device $DEVICE --chip $chip --repeats $REPEATS --warmup 1 \
      -o "$R/profiles/$chip/measured/chip-bench.csv" --write-chip
    timeout 120 $A profile $MODEL "${ARGS[@]}" --seq-len $SEQ --micro-batch 1 \
      --device $DEVICE --repeats $REPEATS --warmup 2 --chip $chip \
      -o "$R/profiles/$chip/measured/llama-1.1b.csv"
    touch "$R/done$p"
    if [ "$DRY" != 1 ]; then
      for o in "$@"; do
        [ -f "$R/done$o" ] || python3 experiments/profiling/gpu_load.py "$R/done$o"
      done
    fi
  ) > "$R/profile$p.log" 2>&1
}
rm -f "$R"/done*
client 50 33 20 & P1=$!
client 33 50 20 & P2=$!
client 20 50 33 & P3=$!
wait $P1 $P2 $P3
grep -h "wrote calibrated" "$R"/profile*.log >> "$LOG"
stamp "profiles done"

# ---- 3. plans ---------------------------------------------------------------------------------------
timeout 120 $A search $MODEL "${ARGS[@]}" --seq-len $SEQ -c $HERE/llama3chip/cluster.yaml \
  -b 16 --tp 1 --no-idle --micro-batch-sizes 1 --schedule 1f1b -q -o "$R/plan_searched.json" >> "$LOG" 2>&1
python3 $HERE/uniform_of.py "$R/plan_searched.json" "$R/plan_uniform.json" >> "$LOG" 2>&1
stamp "plans done"

# ---- 4, 5. runs and validation ------------------------------------------------------------------------
run_plan() {  # $1 = plan name
  local plan="$R/plan_$1.json" envs=""
  if [ $(( $(date +%s) - T0 )) -gt "${LAST_RUN_BEFORE_S:-300}" ]; then
    stamp "$1 skipped: past ${LAST_RUN_BEFORE_S:-300} s, it would not finish within 8 minutes"
    return
  fi
  [ "$DRY" != 1 ] && envs=$(python3 $HERE/mps_rank_env.py --with-devices "$plan")
  # shellcheck disable=SC2086
  $A run "$plan" $MODEL --device $DEVICE "${BACKEND[@]}" $envs --steps $STEPS \
    --warmup $WARMUP --timeout 120 -o "$R/measured_$1.json" >> "$LOG" 2>&1 \
    || echo "== $1 failed" >> "$LOG"
  $A validate "$plan" "$R/measured_$1.json" -o "$R/validation_$1.json" >> "$LOG" 2>&1 \
    || echo "== validation of $1 failed" >> "$LOG"
  stamp "$1 done"
}
run_plan searched
run_plan uniform
grep -E "median step|iteration:|failed|Error|not finite|GEMM self-check|bad" "$LOG"
# One archive, so every file comes back from the device however many there are.
tar czf "$OUT/llama3chip.tgz" -C "$OUT" llama3chip
