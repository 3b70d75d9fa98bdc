#!/usr/bin/env bash
# The backward timed into fresh weight gradients (--fresh-grads, how profiles were taken
# before) against the default, adding into existing ones (training's micro-batches 2 ... m):
# `autosplit profile` of one model at each MPS share, alone, both ways, in one call.
#   OUT=/tmp/out SHARES="50 30 10" MODEL_ARGS="size=2.7b layers=32 hidden=1792 heads=14" \
#     bash experiments/runtime/grad_ab_h200.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
read -r -a SHARES <<< "${SHARES:-50 30 10}"
read -r -a WORDS <<< "${MODEL_ARGS:-size=2.7b layers=32 hidden=1792 heads=14}"
MODEL=${MODEL_FILE:-experiments/models/gpt.py}
R=$OUT/grad-ab-$(IFS=-; echo "${SHARES[*]}")
mkdir -p "$R"
ARGS=()
for w in "${WORDS[@]}"; do ARGS+=(-a "$w"); done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=/tmp/autosplit-cache
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
for p in "${SHARES[@]}"; do
  for mode in fresh accumulate; do
    flag=()
    [ "$mode" = fresh ] && flag=(--fresh-grads)
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p timeout 120 python3 -m autosplit profile "$MODEL" \
      "${ARGS[@]}" --seq-len 2048 --dtype bf16 --micro-batch 1 --device cuda \
      --chip "h200-mps$p" --repeats 5 --warmup 2 "${flag[@]}" -o "$R/${mode}_$p.csv" \
      > "$R/${mode}_$p.log" 2>&1 || echo "profile $mode at $p % failed"
  done
  python3 - "$R" "$p" <<'PY'
import csv, sys
r, p = sys.argv[1], sys.argv[2]
rows = {m: {x["unit"]: x for x in csv.DictReader(open(f"{r}/{m}_{p}.csv"))}
        for m in ("fresh", "accumulate")}
for unit, a in rows["accumulate"].items():
    f = rows["fresh"].get(unit)
    if f:
        print(f"{p} %  {unit:10s} backward fresh {float(f['bwd_s'])*1e3:8.3f} ms, "
              f"accumulate {float(a['bwd_s'])*1e3:8.3f} ms (x{float(a['bwd_s'])/float(f['bwd_s']):.3f})")
PY
done | tee "$R/table.txt"
