#!/usr/bin/env bash
# The heterogeneous run on one H200 split by CUDA MPS into a 75% and a 25% client
# (shared/reference/gpu-emulation.md), gloo between them (the CPU relay). Runs the searched
# and the uniform plan (made beforehand by make_plans.py, which needs OR-Tools) one after the
# other, each for STEPS optimizer steps with bf16 weights and fp32 master weights (the
# runtime's default precision), then AUTOCAST_STEPS steps of the searched plan with the old
# autocast path (0: skip), whose first-step health check locates its non-finite loss. If the
# searched plan's loss is not finite, it is run once more with the math attention backend.
# Leaves measured_*.json, env.txt and runs.log (all output) in $OUT.
#
#   OUT=/tmp/out bash experiments/runtime/run_h200_mps.sh
#   DIAG=1 also runs diagnose_cuda.py (single process, per attention backend) first.
set -euo pipefail
OUT=${OUT:-/tmp/autosplit-out}
STEPS=${STEPS:-12}
WARMUP=${WARMUP:-4}
AUTOCAST_STEPS=${AUTOCAST_STEPS:-3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
} > "$OUT/env.txt" 2>&1

if [ "${DIAG:-0}" = 1 ]; then
  PRECISION=master python3 experiments/runtime/diagnose_cuda.py "$OUT/diag_nomps.json" \
    2>&1 | grep -v Warning || true
fi

nvidia-cuda-mps-control -d
trap 'echo quit | nvidia-cuda-mps-control' EXIT

# run NAME PLAN STEPS WARMUP TIMEOUT [extra autosplit-run options]
run() {
  local name=$1 plan=experiments/runtime/plan_$2.json steps=$3 warmup=$4 timeout=$5
  shift 5
  # Each stage's rank gets the SM share of the chip the plan put it on.
  local rank_env
  rank_env=$(python3 experiments/runtime/mps_rank_env.py "$plan")
  echo "== $name: $rank_env $*"
  # shellcheck disable=SC2086
  python3 -m autosplit run "$plan" experiments/models/gpt.py --device cuda --backend gloo \
    --cuda-devices 0,0 $rank_env --steps "$steps" --warmup "$warmup" --timeout "$timeout" \
    "$@" -o "$OUT/measured_$name.json" 2>&1 | tee -a "$OUT/runs.log" \
    || echo "== $name failed" | tee -a "$OUT/runs.log"
}

run searched searched "$STEPS" "$WARMUP" 150
run uniform uniform "$STEPS" "$WARMUP" 150
finite=$(python3 -c "import json,math,sys; l=json.load(open(sys.argv[1]))['loss']; print(int(bool(l) and all(map(math.isfinite, l))))" "$OUT/measured_searched.json" 2>/dev/null || echo 0)
if [ "$finite" != 1 ]; then
  run searched_math searched 4 1 100 --attention-backend math
fi
if [ "$AUTOCAST_STEPS" -gt 0 ]; then
  run autocast_searched searched "$AUTOCAST_STEPS" 1 100 --precision autocast
fi
