#!/usr/bin/env bash
# GPT-1.3B (sequence 2048, bf16) on one H200 split by CUDA MPS into three chips, each profiled
# under the load training puts on it: while one client runs `autosplit profile`, the other two
# run `autosplit profile-load` (the same model's forward, loss and backward in a loop), so the
# profile sees the kernels and memory traffic of training neighbours, not an idle card or a
# synthetic matrix-product loop. In one go, under 9 minutes:
#   0. are the committed GPT-1.3B rows of H200, h200-mps25 and h200-mps75 found by the
#      profile store (profile_coverage.py)? If not, the whole H200 is profiled again with the
#      committed rows' own options (before MPS starts);
#   1. the GEMM fault check (experiments/runtime/mps_gemm_probe.py with GPT-1.3B's Linear
#      shapes) of every share, all clients at once (experiments/runtime/README.md, "The MPS
#      fault"): a share whose GEMMs leave outputs unwritten gets its profiles in suspect/;
#   2. for each share in turn: its two neighbours start profile-load, then the share is
#      profiled (micro-batch 1, 2, 4; TP 1; spread target 3 %), then the neighbours stop;
#   3. for comparison, each share profiled alone at micro-batch 2 (idle neighbours), while
#      time is left.
# Everything lands in $OUT/reprofile: profiles under load in profiles/<chip>/measured/ (with the
# trio chip files, so `--chips-dir $OUT/reprofile/profiles` uses them), the idle comparison in
# idle/, a faulty share's files in suspect-profiles/ and suspect-idle/, logs, probe.jsonl,
# coverage.txt, env.txt, analysis.md; nothing is written into the checkout. Progress lines carry
# the seconds since the start; every step has a time limit and late steps are skipped, so the
# whole script ends within about 8.5 minutes.
#
#   OUT=/tmp/out bash experiments/profiling/run_h200_reprofile.sh           # on the H200
#   OUT=/tmp/out DRY_RUN=1 bash experiments/profiling/run_h200_reprofile.sh # the CPU, tiny
#   python3 experiments/profiling/analyze_reprofile.py $OUT/reprofile       # anywhere
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
DRY=${DRY_RUN:-0}
read -r -a SHARES <<< "${SHARES:-50 33 20}"
R=$OUT/reprofile
mkdir -p "$R/profiles"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=${AUTOSPLIT_CACHE_DIR:-/tmp/autosplit-cache}
A="python3 -m autosplit"
MODEL=experiments/models/gpt.py
LOAD_MB=2
# LIMIT: one profile under load; IDLE_LIMIT: one alone; a step starting after LAST_LOAD or
# LAST_IDLE seconds is skipped (the CPU dry run has no deadline).
if [ "$DRY" = 1 ]; then
  ARGS=(-a size=tiny -a layers=2) SIZE=tiny SEQ=64 DEVICE=cpu REPEATS=3 WARMUP=1 ROUNDS=2
  MBS=1,2 DTYPE=fp32 LIMIT=400 IDLE_LIMIT=400 LAST_LOAD=100000 LAST_IDLE=100000 THREADS=(--threads 1)
else
  ARGS=(-a size=1.3b) SIZE=1.3b SEQ=2048 DEVICE=cuda REPEATS=10 WARMUP=3 ROUNDS=5
  MBS=1,2,4 DTYPE=bf16 LIMIT=${LIMIT:-120} IDLE_LIMIT=50 LAST_LOAD=${LAST_LOAD:-300} LAST_IDLE=${LAST_IDLE:-440} THREADS=()
fi
export COLUMNS=160  # rich wraps log lines at 80 columns otherwise
LOG=$R/run.log
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
stamp() { echo "[$(elapsed) s] $*" | tee -a "$LOG"; }
chip_of() { echo "h200-mps$1-trio"; }
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv
  python3 -c "import torch; print(torch.__version__, torch.version.cuda)"
  git rev-parse HEAD; } > "$R/env.txt" 2>&1
stamp "start: shares ${SHARES[*]}, GPT $SIZE, seq $SEQ, device $DEVICE"

# ---- 0. the committed GPT-1.3B rows: found, or profiled again on the whole H200 ----------------
if python3 experiments/profiling/profile_coverage.py $MODEL -a size=1.3b --seq-len 2048 \
    --chips H200,h200-mps25,h200-mps75 > "$R/coverage.txt" 2>&1; then
  stamp "committed GPT-1.3B rows found for H200, h200-mps25, h200-mps75: no re-profile needed"
else
  stamp "committed GPT-1.3B rows not all found (coverage.txt): profiling the whole H200 again"
  if [ "$DRY" != 1 ]; then
    mkdir -p "$R/profiles/h200/measured"
    timeout 150 $A profile $MODEL -a size=1.3b --device cuda --chip h200 --micro-batch 1,2,4 \
      --tp 1,2,4,8 --seq-len 2048 --dtype bf16 --repeats 10 --warmup 3 \
      -o "$R/profiles/h200/measured/gpt-1.3b-s2048-bf16.csv" > "$R/profile-h200.log" 2>&1 \
      || stamp "whole-H200 profile failed (profile-h200.log)"
    stamp "whole-H200 profile done"
  fi
fi
cat "$R/coverage.txt" >> "$LOG"

if [ "$DRY" != 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi
share_env() { [ "$DRY" = 1 ] && echo "" || echo "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$1"; }

# ---- 1. GEMM fault check of every share, all clients at once -------------------------------------
declare -A SUSPECT
if [ "$DRY" != 1 ]; then
  pids=()
  for p in "${SHARES[@]}"; do
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p timeout 150 python3 experiments/runtime/mps_gemm_probe.py \
      "reprofile_$p" 2048,4096,8192 --model $MODEL -a size=1.3b >> "$R/probe.jsonl" 2>> "$LOG" &
    pids+=($!)
  done
  wait "${pids[@]}"
  for p in "${SHARES[@]}"; do
    line=$(grep "\"reprofile_$p\"" "$R/probe.jsonl" || true)
    if [ -z "$line" ] || ! python3 -c "import json,sys; r=json.loads(sys.argv[1]); \
sys.exit(0 if r['calls'] and not (r['nonfinite'] or r['wrong'] or r['errors']) else 1)" "$line"; then
      SUSPECT[$p]=1
      stamp "share $p %: GEMM fault check FAILED or missing (probe.jsonl): its profiles go to suspect/"
    else
      stamp "share $p %: GEMM fault check clean"
    fi
  done
fi
folder_of() {  # $1 = share, $2 = profiles (under load) | idle; suspect shares apart
  local base=$R/$2
  [ -n "${SUSPECT[$1]:-}" ] && base=$R/suspect-$2
  echo "$base/$(chip_of "$1")/measured"
}
for p in "${SHARES[@]}"; do  # chip files beside the profiles: --chips-dir $R/profiles works
  trio=experiments/runtime/llama3chip/chips/$(chip_of "$p")/chip.yaml
  mkdir -p "$R/profiles/$(chip_of "$p")"
  [ -f "$trio" ] && cp "$trio" "$R/profiles/$(chip_of "$p")/chip.yaml"
done

# ---- 2. each share under its neighbours' training load --------------------------------------------
for p in "${SHARES[@]}"; do
  if [ "$(elapsed)" -gt $LAST_LOAD ]; then
    stamp "share $p under load skipped: past $LAST_LOAD s"; continue
  fi
  chip=$(chip_of "$p") stop=$R/stop$p dir=$(folder_of "$p" profiles) note="" pids=()
  mkdir -p "$dir"
  rm -f "$stop"
  for o in "${SHARES[@]}"; do
    [ "$o" = "$p" ] && continue
    note="$note${note:+, }$(chip_of "$o")"
    rm -f "$R/ready-$o-for-$p"
    env $(share_env "$o") timeout $((LIMIT + 90)) $A profile-load $MODEL "${ARGS[@]}" \
      --device $DEVICE --micro-batch $LOAD_MB --seq-len $SEQ --dtype $DTYPE --until "$stop" \
      --ready "$R/ready-$o-for-$p" --limit $((LIMIT + 60)) > "$R/load-$o-for-$p.log" 2>&1 &
    pids+=($!)
  done
  note="$note: profile-load gpt.py size=$SIZE micro-batch $LOAD_MB seq $SEQ $DTYPE"
  for _ in $(seq 60); do  # until every neighbour has run its first training step
    [ "$(ls "$R"/ready-*-for-$p 2>/dev/null | wc -l)" -ge "${#pids[@]}" ] && break
    sleep 1
  done
  env $(share_env "$p") timeout $LIMIT $A profile $MODEL "${ARGS[@]}" --device $DEVICE \
    --chip "$chip" --micro-batch $MBS --tp 1 --seq-len $SEQ --dtype $DTYPE --repeats $REPEATS \
    --warmup $WARMUP --max-rounds $ROUNDS "${THREADS[@]}" --load "$note" \
    -o "$dir/gpt-$SIZE-s$SEQ-$DTYPE.csv" > "$R/profile-$p-loaded.log" 2>&1 \
    || stamp "share $p under load: profile failed (profile-$p-loaded.log)"
  touch "$stop"
  wait "${pids[@]}"
  stamp "share $p under load done: $(grep -c 'still above' "$R/profile-$p-loaded.log") noisy row(s)"
  grep -h "training steps of" "$R"/load-*-for-$p.log | tee -a "$LOG"
done

# ---- 3. each share alone, micro-batch 2, for comparison -------------------------------------------
for p in "${SHARES[@]}"; do
  if [ "$(elapsed)" -gt $LAST_IDLE ]; then stamp "share $p idle skipped: past $LAST_IDLE s"; continue; fi
  dir=$(folder_of "$p" idle)
  mkdir -p "$dir"
  env $(share_env "$p") timeout $IDLE_LIMIT $A profile $MODEL "${ARGS[@]}" --device $DEVICE \
    --chip "$(chip_of "$p")" --micro-batch 2 --tp 1 --seq-len $SEQ --dtype $DTYPE \
    --repeats $REPEATS --warmup $WARMUP --max-rounds 2 "${THREADS[@]}" \
    -o "$dir/gpt-$SIZE-s$SEQ-$DTYPE.csv" > "$R/profile-$p-idle.log" 2>&1 \
    || stamp "share $p idle: profile failed (profile-$p-idle.log)"
  stamp "share $p idle done"
done
python3 experiments/profiling/analyze_reprofile.py "$R" | tee "$R/analysis.md"
stamp "finished"
# One archive, so every file comes back from the device however many there are.
tar czf "$OUT/reprofile.tgz" -C "$OUT" reprofile
