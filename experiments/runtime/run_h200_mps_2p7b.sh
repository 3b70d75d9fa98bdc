#!/usr/bin/env bash
# GPT-2.7B on one H200 split by CUDA MPS into a 75 % and a 25 % client, end to end on the GPU
# machine: profile the model's layers on both clients while they run concurrently, search the
# plan with those measured profiles (the DP solver needs no OR-Tools), derive the uniform split
# of the same devices, run both for a few steps over the gloo CPU relay. Writes everything to
# $OUT (plans, profiles, measured runs, log).
#
#   OUT=/tmp/out bash experiments/runtime/run_h200_mps_2p7b.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=/tmp/autosplit-cache
A="python3 -m autosplit"
MODEL="experiments/models/gpt.py -a size=2.7b --seq-len 2048"
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
T0=$(date +%s)
client() {  # $1 = SM percentage, $2 = the other client's
  local p=$1 o=$2
  ( export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p
    $A profile $MODEL --micro-batch 2 --device cuda --repeats 5 --warmup 2 --chip h200-mps$p \
      -o profiles/h200-mps$p/measured/gpt-2.7b-s2048-bf16.csv
    cp profiles/h200-mps$p/measured/gpt-2.7b-s2048-bf16.csv "$OUT/h200-mps$p-gpt-2.7b.csv"
    touch /tmp/done$p
    [ -f /tmp/done$o ] || python3 experiments/profiling/gpu_load.py /tmp/done$o
  ) > "$OUT/profile$p.log" 2>&1
}
client 75 25 & P75=$!
client 25 75 & P25=$!
wait $P75 $P25
echo "profiles: $(( $(date +%s) - T0 )) s" | tee -a "$OUT/run.log"
$A search $MODEL -c experiments/clusters/h200_mps_3to1.yaml -b 16 --tp 1 --no-idle --schedule 1f1b -q \
  -o "$OUT/plan_searched_2p7b.json" >> "$OUT/run.log" 2>&1
python3 experiments/runtime/uniform_of.py "$OUT/plan_searched_2p7b.json" "$OUT/plan_uniform_2p7b.json" \
  >> "$OUT/run.log" 2>&1
echo "plans: $(( $(date +%s) - T0 )) s" | tee -a "$OUT/run.log"
for name in searched uniform; do
  plan="$OUT/plan_${name}_2p7b.json"
  envs=$(python3 experiments/runtime/mps_rank_env.py "$plan")
  # shellcheck disable=SC2086
  $A run "$plan" experiments/models/gpt.py --device cuda --backend gloo --cuda-devices 0,0 \
    $envs --steps 7 --warmup 2 --timeout 150 -o "$OUT/measured_${name}_2p7b.json" \
    >> "$OUT/run.log" 2>&1 || echo "== $name failed" >> "$OUT/run.log"
  echo "$name: $(( $(date +%s) - T0 )) s" | tee -a "$OUT/run.log"
done
grep -E "median step|predicted|failed" "$OUT/run.log"
