#!/usr/bin/env bash
# Narrow down the non-finite loss seen on the MPS-split H200: the searched plan for a few
# steps under four conditions — no MPS at all; MPS with both clients at 100 %; MPS 25/75 as
# in the experiment; MPS 25/75 with cuBLASLt's fused bias epilogue off for addmm
# (DISABLE_ADDMM_CUDA_LT=1). Writes measured_<case>.json and bisect.log to $OUT.
#
#   OUT=/tmp/out bash experiments/runtime/nan_bisect.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PLAN=experiments/runtime/plan_searched.json
common=(experiments/models/gpt.py --device cuda --backend gloo --cuda-devices 0,0
        --steps 3 --warmup 1 --timeout 120)
case_run() {
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/bisect.log"
  python3 -m autosplit run "$PLAN" "${common[@]}" "$@" -o "$OUT/measured_$name.json" \
    >> "$OUT/bisect.log" 2>&1 || echo "== $name failed" | tee -a "$OUT/bisect.log"
  python3 - "$OUT/measured_$name.json" <<'PY' | tee -a "$OUT/bisect.log"
import json, math, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as exc:
    print("   no result:", exc); raise SystemExit
loss = d.get("loss") or []
print("   loss", loss, "finite" if loss and all(map(math.isfinite, loss)) else "NON-FINITE",
      "step", d.get("step_time_s"), "notes", str(d.get("notes", ""))[:300])
PY
}
case_run no_mps
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
case_run mps_100 --rank-env 0:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100 \
  --rank-env 1:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100
case_run mps_25_75 --rank-env 0:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 \
  --rank-env 1:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=75
case_run mps_25_75_nolt --rank-env 0:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 \
  --rank-env 1:CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=75 \
  --rank-env 0:DISABLE_ADDMM_CUDA_LT=1 --rank-env 1:DISABLE_ADDMM_CUDA_LT=1
