#!/usr/bin/env bash
# Run the two GPT-2.7B plans (searched with the measured MPS profiles by
# run_h200_mps_2p7b.sh, and its uniform split) on one H200 split by CUDA MPS into a 75 % and a
# 25 % client, gloo CPU relay between them. Writes measured_*_2p7b.json and run.log to $OUT.
#
#   OUT=/tmp/out bash experiments/runtime/run_plans_2p7b.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
T0=$(date +%s)
for name in searched uniform; do
  plan="experiments/runtime/plan_${name}_2p7b.json"
  envs=$(python3 experiments/runtime/mps_rank_env.py "$plan")
  # shellcheck disable=SC2086
  python3 -m autosplit run "$plan" experiments/models/gpt.py --device cuda --backend gloo \
    --cuda-devices 0,0 $envs --steps 6 --warmup 2 --timeout 120 \
    -o "$OUT/measured_${name}_2p7b.json" >> "$OUT/run.log" 2>&1 || echo "== $name failed" >> "$OUT/run.log"
  echo "$name: $(( $(date +%s) - T0 )) s" | tee -a "$OUT/run.log"
done
grep -E "median step|failed|Error" "$OUT/run.log"
