#!/usr/bin/env bash
# Train the two GPT-2.7B plans of one MPS pair (experiments/runtime/plan_{searched,uniform}_TAG.json,
# made by run_h200_mps_pair.sh) on one H200 split by CUDA MPS, gloo CPU relay between the
# clients, with the runtime's defaults (lr 1e-4, gradient clipping at 1.0, bf16 with fp32
# masters); then the searched plan once more. Writes measured_*.json and run.log to $OUT.
#
#   OUT=/tmp/out TAG=70_20 bash experiments/runtime/run_plans_pair.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
TAG=${TAG:-70_20}
STEPS=${STEPS:-12}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=/tmp/autosplit-cache
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
T0=$(date +%s)
run_plan() {  # $1 = plan name, $2 = output name, $3 = steps
  local plan="experiments/runtime/plan_$1_$TAG.json" envs
  envs=$(python3 experiments/runtime/mps_rank_env.py "$plan")
  # shellcheck disable=SC2086
  python3 -m autosplit run "$plan" experiments/models/gpt.py --device cuda --backend gloo \
    --cuda-devices 0,0 $envs --steps "$3" --warmup 3 --timeout 150 -o "$OUT/$2.json" \
    >> "$OUT/run.log" 2>&1 || echo "== $2 failed" >> "$OUT/run.log"
  echo "[$(( $(date +%s) - T0 )) s] $2 done" | tee -a "$OUT/run.log"
}
run_plan searched "measured_searched_$TAG" "$STEPS"
run_plan uniform "measured_uniform_$TAG" "$STEPS"
[ $(( $(date +%s) - T0 )) -lt "${REPEAT_BEFORE_S:-300}" ] && \
  run_plan searched "measured_searched_${TAG}_repeat" "$STEPS"
grep -E "median step|failed|Error|not finite" "$OUT/run.log"
