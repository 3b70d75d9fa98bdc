#!/usr/bin/env bash
# Which CUDA MPS SM percentages give correct bf16 GEMMs on this GPU? Runs mps_gemm_probe.py in
# a client at each percentage, alone and beside a 20 % client running the probe too, and writes
# one JSON line per client to $OUT/sweep.jsonl (label "alone" or "with20").
#
#   OUT=/tmp/out bash experiments/runtime/mps_probe_sweep.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
mkdir -p "$OUT"
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
P=experiments/runtime/mps_gemm_probe.py
for p in ${PERCENTAGES:-100 90 85 80 75 70 66 60 50 40 33}; do
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p python3 $P alone >> "$OUT/sweep.jsonl"
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p python3 $P with20 >> "$OUT/sweep.jsonl" & A=$!
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20 python3 $P with$p >> "$OUT/sweep.jsonl" & B=$!
  wait $A $B
done
cat "$OUT/sweep.jsonl"
