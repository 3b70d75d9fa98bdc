#!/usr/bin/env bash
# One H200 split by CUDA MPS into chips at any SM shares, a GPT or a Llama of any size, end to
# end in one go (run_h200_llama3chip.sh with the mix, the model and the batch as settings):
#   1. the GEMM fault check (mps_gemm_probe.py with the model's own Linear shapes) in every
#      client at once; a share that computes a wrong or unwritten product stops the run here
#      (probe_verdict.py, exit code 3), before anything is timed;
#   1b. the CPU relay timed as the runtime moves a boundary (relay_bench.py), others busy;
#   2. chip files for the shares (mps_chips.py: datasheet x share, a 1/n of the card's memory
#      each, the measured CPU relay between every pair), then chip benchmark (--write-chip) and layer
#      profiles of every client, measured while all of them run (a client that finishes first
#      keeps its share of the GPU busy until the others are done);
#   3. the plan searched with those profiles (--schedule 1f1b), and the uniform split of the
#      same devices (uniform_of.py);
#   4. both plans trained by `autosplit run --device cuda --backend gloo` (the CPU relay: NCCL
#      cannot join two processes on one GPU), each rank at its chip's share;
#   5. `autosplit validate` of both, and the predicted-vs-measured table (analyse_runs.py).
# Everything lands in $OUT/$TAG (chips and profiles in $OUT/$TAG/profiles); nothing is written
# into the checkout. Every step has a time limit, and a run that would start after
# LAST_RUN_BEFORE_S (default 330 s) is skipped, so the script stays under 9 minutes.
#
# Settings (environment):
#   SHARES      SM percentages of the chips, fastest first    default "55 30 15"
#   MODEL       gpt | llama                                    default gpt
#   MODEL_ARGS  the model's size, KEY=VALUE words              default per model: mix_models.sh
#   SEQ, BATCH  tokens per sample, samples per step            default 2048, 16
#   MICRO       per-replica micro-batch sizes the search may use (and the profiles measure)
#                                                              default 1
#   STEPS, WARMUP                                              default 8, 3
#   TAG         output folder name under $OUT                  default mix-<shares>-<model>
#   RELAY=0     skip the relay benchmark (relay_bench.py): default relay figures
#   LOAD=gemm   a client done profiling runs matrix products (default: the model's training step)
#   PROBE_ONLY=1  stop after the fault check (check candidate shares in about 30 s)
#   DRY_RUN=1   the CPU, a tiny model, no MPS: every step, the same files
#
#   OUT=/tmp/out SHARES="55 30 15" MODEL=gpt bash experiments/runtime/run_h200_mix.sh
#   OUT=/tmp/out SHARES="45 35 20" MODEL=llama bash experiments/runtime/run_h200_mix.sh
#   OUT=/tmp/out DRY_RUN=1 bash experiments/runtime/run_h200_mix.sh
set -uo pipefail
die() { echo "error: $*" >&2; exit 2; }
OUT=${OUT:-/tmp/autosplit-out}
DRY=${DRY_RUN:-0}
read -r -a SHARES <<< "${SHARES:-55 30 15}"
MODEL_KIND=${MODEL:-gpt}
SEQ=${SEQ:-2048} BATCH=${BATCH:-16} MICRO=${MICRO:-1} STEPS=${STEPS:-8} WARMUP=${WARMUP:-3}
# shellcheck source=experiments/runtime/mix_models.sh
source experiments/runtime/mix_models.sh
model_setup "$MODEL_KIND" || die "MODEL=$MODEL_KIND: use MODEL=gpt or MODEL=llama"
MODEL=$MODEL_FILE
read -r -a WORDS <<< "${MODEL_ARGS:-$DEFAULT_ARGS}"
for n in "$SEQ" "$BATCH" "$STEPS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "SEQ, BATCH and STEPS must be positive integers (got '$n')"
done
[[ "$WARMUP" =~ ^[0-9]+$ && "$WARMUP" -lt "$STEPS" ]] \
  || die "WARMUP=$WARMUP must be a whole number below STEPS=$STEPS"
[[ "$MICRO" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "MICRO=$MICRO: write sizes as 1 or 1,2"
[ "${#SHARES[@]}" -ge 2 ] || die "SHARES='${SHARES[*]}': give two or more SM percentages"
for p in "${SHARES[@]}"; do
  [[ "$p" =~ ^[1-9][0-9]?$|^100$ ]] || die "SHARES: '$p' is not a percentage from 1 to 100"
done
[ "$(printf '%s\n' "${SHARES[@]}" | sort -u | wc -l)" -eq "${#SHARES[@]}" ] \
  || die "SHARES='${SHARES[*]}': each chip needs its own share (chips are named by it)"
for w in "${WORDS[@]}"; do
  [[ "$w" == *=* ]] || die "MODEL_ARGS: '$w' is not KEY=VALUE"
done
JOINED=$(IFS=-; echo "${SHARES[*]}")
TAG=${TAG:-mix-$JOINED-$MODEL_KIND}
R=$OUT/$TAG
HERE=experiments/runtime
SUFFIX=mix
if [ "$DRY" = 1 ]; then
  # The CPU: a tiny model of the same family, fp32 runs.
  read -r -a WORDS <<< "$TINY_ARGS"
  SEQ=32 DEVICE=cpu DTYPE=fp32 STEPS=3 WARMUP=1 REPEATS=1 LAST_RUN_BEFORE_S=${LAST_RUN_BEFORE_S:-100000} BACKEND=()
else
  DEVICE=cuda DTYPE=bf16 REPEATS=5 BACKEND=(--backend gloo)
fi
ARGS=()
for w in "${WORDS[@]}"; do ARGS+=(-a "$w"); done
TOKENS=$(python3 -c "print(','.join(str(int(m) * $SEQ) for m in '$MICRO'.split(',')))")
mkdir -p "$R/profiles" || die "cannot create $R"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=${AUTOSPLIT_CACHE_DIR:-/tmp/autosplit-cache}
# The run's chips and layer profiles live in the output folder and override the shipped ones.
export AUTOSPLIT_PROFILES=$R/profiles AUTOSPLIT_CHIP_PATH=$R/profiles
A="python3 -m autosplit"
LOG=$R/run.log
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
stamp "$TAG: shares ${SHARES[*]}, $MODEL ${WORDS[*]}, seq $SEQ, batch $BATCH, micro $MICRO"
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit,memory.total --format=csv
  python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$R/env.txt" 2>&1

if [ "$DRY" != 1 ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi

# ---- 1. GEMM fault check, every share at once, the model's shapes ------------------------------
if [ "$DRY" != 1 ]; then
  pids=()
  for p in "${SHARES[@]}"; do
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p timeout 90 python3 $HERE/mps_gemm_probe.py \
      "${TAG}_$p" "$TOKENS" --model $MODEL "${ARGS[@]}" >> "$R/probe.jsonl" 2>> "$LOG" & pids+=($!)
  done
  wait "${pids[@]}"
  python3 $HERE/probe_verdict.py "$R/probe.jsonl" "${SHARES[@]}" 2>&1 | tee -a "$LOG"
  verdict=${PIPESTATUS[0]}
  [ "$verdict" = 0 ] || { stamp "stopped: a share faults (probe.jsonl)"; exit "$verdict"; }
  stamp "probe done: every share clean"
fi
[ "${PROBE_ONLY:-0}" = 1 ] && exit 0

# ---- 1b. the CPU relay as the runtime moves a boundary, the other clients busy -------------------
# (relay_bench.py: device->host copy, gloo, host->device, between the two slowest clients); its
# fit becomes the cluster's relay figures. RELAY=0: the datasheet-like defaults of mps_chips.py.
RELAY_ARGS=()
if [ "${RELAY:-1}" = 1 ]; then
  n=${#SHARES[@]}
  RB=(--repeats 15)
  [ "$DRY" = 1 ] && RB=(--repeats 3 --max-mib 4)
  if timeout 240 python3 $HERE/relay_bench.py --device $DEVICE "${RB[@]}" \
       --shares "${SHARES[n-2]}" "${SHARES[n-1]}" --load "${SHARES[@]:0:n-2}" \
       -o "$R/relay.json" >> "$LOG" 2>&1; then
    RELAY_ARGS=(--relay "$R/relay.json")
    stamp "relay measured: $(python3 -c "import json,sys; f=json.load(open(sys.argv[1]))['fits']['relay']; print(f'{f[\"alpha_us\"]:.0f} us + bytes / {f[\"beta_gbs\"]:.2f} GB/s')" "$R/relay.json")"
  else
    stamp "relay bench failed: the cluster keeps the default relay figures"
  fi
fi

# ---- 2. chips and layer profiles, all clients at once ----------------------------------------------
python3 $HERE/mps_chips.py trio --out "$R" --suffix $SUFFIX --shares "${SHARES[@]}" \
  "${RELAY_ARGS[@]}" || exit 2
for p in "${SHARES[@]}"; do
  chip=h200-mps$p-$SUFFIX
  mkdir -p "$R/profiles/$chip/measured"
  cp "$R/chips/$chip/chip.yaml" "$R/profiles/$chip/chip.yaml"
done
SWEEP=()
$A profile-chip --help 2>/dev/null | grep -q -- "--no-sweep" && [ "${CHIP_SWEEP:-0}" != 1 ] \
  && SWEEP=(--no-sweep)
client() {  # $1 = this client's SM share
  local p=$1 chip=h200-mps$1-$SUFFIX o
  ( export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p
    timeout 120 $A profile-chip --device $DEVICE --chip $chip --repeats $REPEATS --warmup 1 \
      "${SWEEP[@]}" -o "$R/profiles/$chip/measured/chip-bench.csv" --write-chip \
      --chip-file "$R/profiles/$chip/chip.yaml"
    # The layer profiles start together, once every client has benched its chip, so that
    # each is timed next to neighbours running layers too, not a chip benchmark.
    touch "$R/benched$p"
    for o in "${SHARES[@]}"; do
      for _ in $(seq 240); do [ -f "$R/benched$o" ] && break; sleep 0.5; done
    done
    timeout 150 $A profile $MODEL "${ARGS[@]}" --seq-len $SEQ --dtype $DTYPE --micro-batch "$MICRO" \
      --device $DEVICE --repeats $REPEATS --warmup 2 --chip $chip \
      -o "$R/profiles/$chip/measured/$TAG.csv"
    touch "$R/done$p"
    if [ "$DRY" != 1 ]; then
      # Until the others are done: the model's own training kernels (LOAD=gemm: matrix products).
      LOAD_ARGS=(--model $MODEL --seq-len $SEQ --micro-batch "${MICRO%%,*}" --dtype $DTYPE)
      for w in "${WORDS[@]}"; do LOAD_ARGS+=(--model-arg "$w"); done
      [ "${LOAD:-model}" = gemm ] && LOAD_ARGS=()
      for o in "${SHARES[@]}"; do
        [ -f "$R/done$o" ] || python3 experiments/profiling/gpu_load.py "$R/done$o" "${LOAD_ARGS[@]}"
      done
    fi
  ) > "$R/profile$p.log" 2>&1
}
rm -f "$R"/done* "$R"/benched*
pids=()
for p in "${SHARES[@]}"; do client "$p" & pids+=($!); done
wait "${pids[@]}"
grep -h "wrote calibrated\|rows to" "$R"/profile*.log >> "$LOG"
for p in "${SHARES[@]}"; do
  [ -s "$R/profiles/h200-mps$p-$SUFFIX/measured/$TAG.csv" ] \
    || { stamp "stopped: no layer profile of the $p % client (profile$p.log)"; exit 1; }
done
stamp "profiles done"

# ---- 3. plans ------------------------------------------------------------------------------------------
timeout 150 $A search $MODEL "${ARGS[@]}" --seq-len $SEQ --dtype $DTYPE -c "$R/cluster.yaml" -b $BATCH \
  --schedule 1f1b --tp 1 --no-idle --micro-batch-sizes "$MICRO" -q \
  -o "$R/plan_searched.json" >> "$LOG" 2>&1 || { stamp "search failed"; exit 1; }
python3 $HERE/uniform_of.py "$R/plan_searched.json" "$R/plan_uniform.json" >> "$LOG" 2>&1 \
  || { stamp "uniform split failed"; exit 1; }
stamp "plans done"

# ---- 4, 5. runs and validation -------------------------------------------------------------------------
run_plan() {  # $1 = plan name
  local plan="$R/plan_$1.json" envs=""
  if [ $(( $(date +%s) - T0 )) -gt "${LAST_RUN_BEFORE_S:-330}" ]; then
    stamp "$1 skipped: past ${LAST_RUN_BEFORE_S:-330} s, it would not finish within 9 minutes"
    return
  fi
  [ "$DRY" != 1 ] && envs=$(python3 $HERE/mps_rank_env.py --with-devices "$plan")
  # shellcheck disable=SC2086
  $A run "$plan" $MODEL --device $DEVICE "${BACKEND[@]}" $envs --steps $STEPS \
    --warmup $WARMUP --timeout 150 -o "$R/measured_$1.json" >> "$LOG" 2>&1 \
    || echo "== $1 failed" >> "$LOG"
  $A validate "$plan" "$R/measured_$1.json" -o "$R/validation_$1.json" >> "$LOG" 2>&1 \
    || echo "== validation of $1 failed" >> "$LOG"
  stamp "$1 done"
}
run_plan searched
run_plan uniform
python3 $HERE/analyse_runs.py "$R" > "$R/table.md" 2>> "$LOG" && cat "$R/table.md"
grep -E "median step|iteration:|failed|Error|not finite|GEMM self-check|bad" "$LOG"
# One archive, so every file comes back from the device however many there are.
tar czf "$OUT/$(basename "$R").tgz" -C "$(dirname "$R")" "$(basename "$R")"
