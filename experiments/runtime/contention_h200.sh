#!/usr/bin/env bash
# contention_bench.py under CUDA MPS on the H200 machine (the bench itself does not start the
# MPS daemon: without it the clients time-slice the whole GPU and every share runs alike).
#   OUT=/tmp/out SHARES="90 20 10" MODEL_ARGS="size=2.7b layers=8 hidden=2048 heads=16" \
#     bash experiments/runtime/contention_h200.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
read -r -a SHARES <<< "${SHARES:-90 20 10}"
read -r -a WORDS <<< "${MODEL_ARGS:-size=2.7b layers=8 hidden=2048 heads=16}"
MODEL=${MODEL_FILE:-experiments/models/gpt.py}
ARGS=()
for w in "${WORDS[@]}"; do ARGS+=(--model-arg "$w"); done
mkdir -p "$OUT"
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
name=contention_$(IFS=_; echo "${SHARES[*]}")_$(basename "$MODEL" .py).json
timeout 400 python3 experiments/runtime/contention_bench.py --shares "${SHARES[@]}" \
  --model "$MODEL" "${ARGS[@]}" --repeats "${REPEATS:-8}" -o "$OUT/$name"
