#!/usr/bin/env bash
# GPT-2.7B on one H200 split by CUDA MPS into a FAST % and a SLOW % client (default 70 / 20),
# end to end on the GPU machine, in one go:
#   1. the GEMM probe (mps_gemm_probe.py) in both clients at once: are their GEMMs correct?
#   2. chip benchmark (--write-chip) and GPT-2.7B layer profiles of both clients, measured while
#      both run (the one that finishes first keeps the GPU busy until the other is done);
#   3. the plan searched with those profiles on experiments/clusters/h200_mps_FAST_SLOW.yaml
#      (DP solver: no OR-Tools needed) and the uniform split of the same devices;
#   4. both plans trained for 10 steps over the gloo CPU relay, then the searched plan once more.
# Everything lands in $OUT/r and comes back as $OUT/results.tgz (a partial archive is written if
# the time limit nears).
#
#   OUT=/tmp/out FAST=70 SLOW=20 bash experiments/runtime/run_h200_mps_pair.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
FAST=${FAST:-70}
SLOW=${SLOW:-20}
TAG=${FAST}_${SLOW}
R=$OUT/r
mkdir -p "$R"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=/tmp/autosplit-cache
A="python3 -m autosplit"
MODEL="experiments/models/gpt.py -a size=2.7b --seq-len 2048"
LOG=$R/run.log
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
sleep "${WATCHDOG_S:-540}" && tar czf "$OUT/results.tgz" -C "$OUT" r &
WATCHDOG=$!
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv \
  > "$R/env.txt" 2>&1
python3 -c "import torch;print(torch.__version__, torch.version.cuda)" >> "$R/env.txt" 2>&1

# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh

# ---- 1. GEMM probe -------------------------------------------------------------------------
CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$FAST python3 experiments/runtime/mps_gemm_probe.py \
  "pair_$TAG" >> "$R/probe.jsonl" 2>> "$LOG" & Q1=$!
CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$SLOW python3 experiments/runtime/mps_gemm_probe.py \
  "pair_$TAG" >> "$R/probe.jsonl" 2>> "$LOG" & Q2=$!
wait $Q1 $Q2
stamp "probe done"
cat "$R/probe.jsonl" >> "$LOG"

# ---- 2. chips and layer profiles, both clients at once --------------------------------------
client() {  # $1 = SM percentage, $2 = the other client's
  local p=$1 o=$2
  ( export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p
    mkdir -p profiles/h200-mps$p/measured
    $A profile-chip --device cuda --chip h200-mps$p --repeats 5 --warmup 2 \
      -o profiles/h200-mps$p/measured/chip-bench.csv --write-chip
    $A profile $MODEL --micro-batch 1,2 --device cuda --repeats 5 --warmup 2 --chip h200-mps$p \
      -o profiles/h200-mps$p/measured/gpt-2.7b-s2048-bf16.csv
    cp profiles/h200-mps$p/chip.yaml "$R/h200-mps$p-chip.yaml"
    cp profiles/h200-mps$p/measured/chip-bench.csv "$R/h200-mps$p-chip-bench.csv"
    cp profiles/h200-mps$p/measured/gpt-2.7b-s2048-bf16.csv "$R/h200-mps$p-gpt-2.7b.csv"
    touch /tmp/done$p
    [ -f /tmp/done$o ] || python3 experiments/profiling/gpu_load.py /tmp/done$o
  ) > "$R/profile$p.log" 2>&1
}
rm -f /tmp/done$FAST /tmp/done$SLOW
client $FAST $SLOW & P1=$!
client $SLOW $FAST & P2=$!
wait $P1 $P2
stamp "profiles done"

# ---- 3. plans --------------------------------------------------------------------------------
$A search $MODEL -c experiments/clusters/h200_mps_$TAG.yaml -b 16 --tp 1 --no-idle --schedule 1f1b -q \
  -o "$R/plan_searched_$TAG.json" >> "$LOG" 2>&1
python3 experiments/runtime/uniform_of.py "$R/plan_searched_$TAG.json" \
  "$R/plan_uniform_$TAG.json" >> "$LOG" 2>&1
stamp "plans done"

# ---- 4. runs -----------------------------------------------------------------------------------
run_plan() {  # $1 = plan name, $2 = output name, $3 = steps, $4 = warm-up
  local plan="$R/plan_$1_$TAG.json" envs
  envs=$(python3 experiments/runtime/mps_rank_env.py "$plan")
  # shellcheck disable=SC2086
  $A run "$plan" experiments/models/gpt.py --device cuda --backend gloo --cuda-devices 0,0 \
    $envs --steps "$3" --warmup "$4" --timeout 150 -o "$R/$2.json" >> "$LOG" 2>&1 \
    || echo "== $2 failed" >> "$LOG"
  stamp "$2 done"
}
run_plan searched "measured_searched_$TAG" 10 3
run_plan uniform "measured_uniform_$TAG" 10 3
[ $(( $(date +%s) - T0 )) -lt 420 ] && run_plan searched "measured_searched_${TAG}_repeat" 8 3
pkill -P $WATCHDOG sleep 2>/dev/null; kill $WATCHDOG 2>/dev/null
grep -E "median step|failed|Error|not finite" "$LOG"
tar czf "$OUT/results.tgz" -C "$OUT" r
