#!/usr/bin/env bash
# The heterogeneous run on one H200 split by CUDA MPS into a 75% and a 25% client
# (shared/reference/gpu-emulation.md), gloo between them (the CPU relay). Runs the searched
# and the uniform plan (made beforehand by make_plans.py, which needs OR-Tools) one after the
# other, each for STEPS optimizer steps, and leaves measured_*.json and logs in $OUT.
#
#   OUT=/tmp/out bash experiments/runtime/run_h200_mps.sh
set -euo pipefail
OUT=${OUT:-/tmp/autosplit-out}
STEPS=${STEPS:-12}
WARMUP=${WARMUP:-4}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
} > "$OUT/env.txt" 2>&1

# One training step of a 1.3B-wide GPT in one process, per attention backend, first on the
# whole GPU and then as a 25% MPS client: tells kernel NaNs apart from pipeline/relay ones.
python3 experiments/runtime/diagnose_cuda.py "$OUT/diag_nomps.json" 2>&1 | grep -v Warning || true

nvidia-cuda-mps-control -d
trap 'echo quit | nvidia-cuda-mps-control' EXIT

CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 python3 experiments/runtime/diagnose_cuda.py \
  "$OUT/diag_mps25.json" 2>&1 | grep -v Warning || true
# Use PyTorch's attention choice unless it was not finite there (ATTN overrides).
ATTN=${ATTN-$(python3 -c "import json,sys; b=json.load(open(sys.argv[1])).get('first_finite_backend',''); print('' if b in ('', 'default') else b)" "$OUT/diag_mps25.json" 2>/dev/null || true)}
echo "== attention backend: ${ATTN:-default}"

for name in searched uniform; do
  plan=experiments/runtime/plan_$name.json
  # Each stage's rank gets the SM share of the chip the plan put it on.
  rank_env=$(python3 - "$plan" <<'PY'
import json, sys
stages = json.load(open(sys.argv[1]))["stages"]
share = {"h200-mps75": 75, "h200-mps25": 25}
print(" ".join(f"--rank-env {s['index']}:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={share[s['chip']]}"
               for s in stages))
PY
)
  echo "== $name: $rank_env"
  # shellcheck disable=SC2086
  python3 -m autosplit run "$plan" experiments/models/gpt.py --device cuda --backend gloo \
    --cuda-devices 0,0 $rank_env --steps "$STEPS" --warmup "$WARMUP" --timeout 240 \
    ${ATTN:+--attention-backend "$ATTN"} \
    -o "$OUT/measured_$name.json" 2>&1 | tee "$OUT/run_$name.log" || echo "== $name failed"
done
