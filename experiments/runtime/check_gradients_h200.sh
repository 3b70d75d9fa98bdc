#!/usr/bin/env bash
# Are GPT-2.7B's gradients right on the GPU, and where do MPS SM limits break them?
#   1. the GEMM probe with one- and two-sample micro-batch shapes (2048 and 4096 tokens) in
#      clients at 70 % and 20 % (the 70/20 pair), at 100 %, and without MPS;
#   2. the searched 70/20 plan for 4 steps with both ranks on the whole GPU (no MPS, no SM
#      limit): the gradient norms to compare with the MPS runs.
# Writes probe.jsonl, measured_searched_70_20_nomps.json and run.log to $OUT.
#
#   OUT=/tmp/out bash experiments/runtime/check_gradients_h200.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=/tmp/autosplit-cache
P="experiments/runtime/mps_gemm_probe.py"
python3 $P no_mps 2048,4096 >> "$OUT/probe.jsonl"
python3 -m autosplit run experiments/runtime/plan_searched_70_20.json experiments/models/gpt.py \
  --device cuda --backend gloo --cuda-devices 0,0 --steps 4 --warmup 1 --timeout 150 \
  -o "$OUT/measured_searched_70_20_nomps.json" >> "$OUT/run.log" 2>&1 || echo "== run failed" >> "$OUT/run.log"
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
for p in 100 70 20; do
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p python3 $P mps$p 2048,4096 >> "$OUT/probe.jsonl"
done
cat "$OUT/probe.jsonl"
grep -E "median step|failed|Error" "$OUT/run.log"
