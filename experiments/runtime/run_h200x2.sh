#!/usr/bin/env bash
# Two H200s of one host as two chips of different speed — one chip per GPU, each limited by its
# own CUDA MPS SM share (GPU 0 at SHARES[0], GPU 1 at SHARES[1]) — joined by NCCL, end to end:
#   1. the GEMM fault check (mps_gemm_probe.py, each model's own Linear shapes) on each GPU at
#      its share; a share that computes a wrong or unwritten product stops the run (exit 3);
#   2. the link between the GPUs: point-to-point and all-reduce over NCCL, fitted to latency +
#      bytes/bandwidth (`autosplit profile-chip --links` where the option exists, else
#      link_bench.py, the same measurement), written into the clusters (mps_chips.py pair);
#   3. chip benchmark (--write-chip) and layer profiles of each GPU at its share (TP = 1 and 2
#      on GPU 0, whose chip the TP stage runs on), the two GPUs at once;
#   4. per model, four plans: the searched two-stage pipeline of the two chips
#      (cluster_pipeline.yaml) and its uniform split; one stage of TP = 2 over both GPUs
#      (cluster_tp.yaml, both at SHARES[0]); one stage of DP = 2 with a replica on each chip
#      and uneven batch shares (cluster_dp.yaml) — each checked for its layout (plan_layout.py);
#   5. each trained by `autosplit run --device cuda --backend nccl`, each rank on its GPU at its
#      share, then `autosplit validate`, and the predicted-vs-measured table (analyse_runs.py).
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0 and the PyTorch/NVSHMEM equivalents), for every
# process this starts. Everything lands in $OUT/$TAG; nothing is written into the checkout.
# Every step has a time limit, and a run that would start after LAST_RUN_BEFORE_S (default
# 400 s) is skipped; one model per call stays under 9 minutes.
#
# Settings (environment):
#   SHARES      SM percentages of GPU 0 and GPU 1             default "100 33"
#   MODELS      gpt, llama or both (sizes: mix_models.sh)     default gpt
#   SEQ, BATCH  tokens per sample, samples per step            default 2048, 16
#   MICRO       micro-batch sizes of the pipeline and TP plans default 1
#   MICRO_DP    micro-batch sizes the DP plan may use; its replicas' shares (e.g. 3 + 1 of 4)
#               are profiled too                               default 1,2,4
#   STEPS, WARMUP                                              default 8, 3
#   TAG         output folder name under $OUT                  default x2-<shares>-<models>
#   DRY_RUN=1   the CPU, tiny models, gloo, no MPS: every step, the same files
#
#   OUT=/tmp/out MODELS=gpt bash experiments/runtime/run_h200x2.sh     # on nvidia-h200-x2
#   OUT=/tmp/out MODELS=llama bash experiments/runtime/run_h200x2.sh
#   OUT=/tmp/out DRY_RUN=1 MODELS="gpt llama" bash experiments/runtime/run_h200x2.sh
set -uo pipefail
die() { echo "error: $*" >&2; exit 2; }
OUT=${OUT:-/tmp/autosplit-out}
DRY=${DRY_RUN:-0}
read -r -a SHARES <<< "${SHARES:-100 33}"
read -r -a MODELS <<< "${MODELS:-gpt}"
SEQ=${SEQ:-2048} BATCH=${BATCH:-16} MICRO=${MICRO:-1} MICRO_DP=${MICRO_DP:-1,2,4}
STEPS=${STEPS:-8} WARMUP=${WARMUP:-3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
for n in "$SEQ" "$BATCH" "$STEPS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "SEQ, BATCH and STEPS must be positive integers (got '$n')"
done
[[ "$WARMUP" =~ ^[0-9]+$ && "$WARMUP" -lt "$STEPS" ]] \
  || die "WARMUP=$WARMUP must be a whole number below STEPS=$STEPS"
for m in "$MICRO" "$MICRO_DP"; do
  [[ "$m" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "MICRO/MICRO_DP=$m: write sizes as 1 or 1,2,4"
done
[ "${#SHARES[@]}" -eq 2 ] || die "SHARES='${SHARES[*]}': give two SM percentages, GPU 0's first"
for p in "${SHARES[@]}"; do
  [[ "$p" =~ ^[1-9][0-9]?$|^100$ ]] || die "SHARES: '$p' is not a percentage from 1 to 100"
done
[ "${SHARES[0]}" != "${SHARES[1]}" ] || die "SHARES: the two chips need different shares"
[ "${#MODELS[@]}" -ge 1 ] || die "MODELS is empty: use gpt, llama or \"gpt llama\""
# shellcheck source=experiments/runtime/mix_models.sh
source experiments/runtime/mix_models.sh
for m in "${MODELS[@]}"; do
  model_setup "$m" || die "MODELS: '$m' is not gpt or llama"
done
FAST=${SHARES[0]} SLOW=${SHARES[1]} SUFFIX=x2
CHIP0=h200-mps$FAST-$SUFFIX CHIP1=h200-mps$SLOW-$SUFFIX
TAG=${TAG:-x2-$FAST-$SLOW-$(IFS=-; echo "${MODELS[*]}")}
R=$OUT/$TAG
HERE=experiments/runtime
# Every micro-batch size a plan may give a replica: the allowed sizes, and for DP every share
# of them (3 + 1 of 4 needs 3).
PROFILE_MB=$(python3 -c "
m = {int(x) for x in '$MICRO'.split(',')}
d = {s for x in '$MICRO_DP'.split(',') for s in range(1, int(x) + 1)}
print(','.join(map(str, sorted(m | d))))")
if [ "$DRY" = 1 ]; then
  SEQ=32 DEVICE=cpu DTYPE=fp32 STEPS=3 WARMUP=1 REPEATS=1 LAST_RUN_BEFORE_S=${LAST_RUN_BEFORE_S:-100000} BACKEND=() LINK_BACKEND=gloo
else
  DEVICE=cuda DTYPE=bf16 REPEATS=5 BACKEND=(--backend nccl) LINK_BACKEND=nccl
fi
mkdir -p "$R/profiles" || die "cannot create $R"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=${AUTOSPLIT_CACHE_DIR:-/tmp/autosplit-cache}
export AUTOSPLIT_PROFILES=$R/profiles AUTOSPLIT_CHIP_PATH=$R/profiles
A="python3 -m autosplit"
LOG=$R/run.log
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
set_model() {  # $1 = model kind: sets MODEL_FILE and MARGS (its -a options)
  local w words
  model_setup "$1"
  if [ "$DRY" = 1 ]; then read -r -a words <<< "$TINY_ARGS"
  else read -r -a words <<< "$DEFAULT_ARGS"; fi
  MARGS=()
  for w in "${words[@]}"; do MARGS+=(-a "$w"); done
}
stamp "$TAG: GPU 0 at $FAST %, GPU 1 at $SLOW %, models ${MODELS[*]}, seq $SEQ, batch $BATCH"
{ nvidia-smi --query-gpu=index,name,driver_version,clocks.max.sm,memory.total --format=csv
  nvidia-smi topo -m
  python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.nccl.version() if torch.cuda.is_available() else '')"
} > "$R/env.txt" 2>&1

if [ "$DRY" != 1 ]; then
  gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
  [ "$gpus" -ge 2 ] 2>/dev/null || die "this machine has ${gpus:-no} GPU(s); run on a two-GPU host"
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d
  trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi

# ---- 1. GEMM fault check: each GPU at its share, each model's shapes -----------------------------
if [ "$DRY" != 1 ]; then
  TOKENS=$(python3 -c "print(','.join(str(int(m) * $SEQ) for m in '$PROFILE_MB'.split(',')))")
  for m in "${MODELS[@]}"; do
    set_model "$m"
    CUDA_VISIBLE_DEVICES=0 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$FAST timeout 120 python3 \
      $HERE/mps_gemm_probe.py "${TAG}_gpu0_$m" "$TOKENS" --model "$MODEL_FILE" "${MARGS[@]}" \
      >> "$R/probe.jsonl" 2>> "$LOG" & a=$!
    CUDA_VISIBLE_DEVICES=1 CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$SLOW timeout 120 python3 \
      $HERE/mps_gemm_probe.py "${TAG}_gpu1_$m" "$TOKENS" --model "$MODEL_FILE" "${MARGS[@]}" \
      >> "$R/probe.jsonl" 2>> "$LOG" & b=$!
    wait $a $b
  done
  python3 $HERE/probe_verdict.py "$R/probe.jsonl" "$FAST" "$SLOW" 2>&1 | tee -a "$LOG"
  verdict=${PIPESTATUS[0]}
  [ "$verdict" = 0 ] || { stamp "stopped: a share faults (probe.jsonl)"; exit "$verdict"; }
  stamp "probe done: both shares clean"
fi

# ---- 2. the link between the GPUs ---------------------------------------------------------------------
python3 $HERE/mps_chips.py pair --out "$R" --suffix $SUFFIX --shares "$FAST" "$SLOW" \
  --link-bw-gbs 450 --link-latency-us 5 > /dev/null || exit 2   # chip files; link below
for c in $CHIP0 $CHIP1; do
  mkdir -p "$R/profiles/$c/measured"
  cp "$R/chips/$c/chip.yaml" "$R/profiles/$c/chip.yaml"
done
SWEEP=()
HELP=$($A profile-chip --help 2>/dev/null)
grep -q -- "--no-sweep" <<< "$HELP" && [ "${CHIP_SWEEP:-0}" != 1 ] && SWEEP=(--no-sweep)
if grep -q -- "--links" <<< "$HELP"; then
  # profile-chip --links: the chip bench of GPU 0 and the link to GPU 1 (NCCL with two GPUs).
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$FAST timeout 180 $A profile-chip --device $DEVICE \
    --chip $CHIP0 --repeats $REPEATS --warmup 1 "${SWEEP[@]}" --links --write-chip \
    --chip-file "$R/profiles/$CHIP0/chip.yaml" -o "$R/profiles/$CHIP0/measured/chip-bench.csv" \
    > "$R/links.log" 2>&1
  python3 $HERE/link_bench.py --from-csv "$R/profiles/$CHIP0/measured/chip-bench-links.csv" \
    -o "$R/links.json" >> "$R/links.log" 2>&1
  LINKS_BY=profile-chip
else
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$FAST timeout 120 python3 $HERE/link_bench.py \
    --backend $LINK_BACKEND -o "$R/links.json" > "$R/links.log" 2>&1
  LINKS_BY=link_bench.py
fi
cat "$R/links.log" >> "$LOG"
read -r BW LAT < <(python3 -c "
import json; f = json.load(open('$R/links.json'))['fits']['p2p']
print(round(f['beta_gbs'], 3), round(f['alpha_us'], 3))") \
  || { stamp "stopped: the link was not measured ($R/links.log)"; exit 1; }
python3 $HERE/mps_chips.py pair --out "$R/measured-link" --suffix $SUFFIX --shares "$FAST" \
  "$SLOW" --link-bw-gbs "$BW" --link-latency-us "$LAT" || exit 2
cp "$R"/measured-link/cluster_*.yaml "$R/"
stamp "link ($LINKS_BY): $BW GB/s, $LAT us"

# ---- 3. chips and layer profiles, both GPUs at once ---------------------------------------------------
gpu_chain() {  # $1 = GPU, $2 = share, $3 = chip, $4 = TP degrees to profile, $5 = run the bench
  local g=$1 p=$2 chip=$3 tps=$4 m
  ( export CUDA_VISIBLE_DEVICES=$g CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p
    if [ "$5" = 1 ]; then
      timeout 150 $A profile-chip --device $DEVICE --chip "$chip" --repeats $REPEATS \
        --warmup 1 "${SWEEP[@]}" --write-chip --chip-file "$R/profiles/$chip/chip.yaml" \
        -o "$R/profiles/$chip/measured/chip-bench.csv"
    fi
    for m in "${MODELS[@]}"; do
      set_model "$m"
      timeout 200 $A profile "$MODEL_FILE" "${MARGS[@]}" --seq-len $SEQ --dtype $DTYPE \
        --micro-batch "$PROFILE_MB" --tp "$tps" --device $DEVICE --repeats $REPEATS \
        --warmup 2 --chip "$chip" -o "$R/profiles/$chip/measured/$TAG-$m.csv"
    done
  ) > "$R/profile_gpu$g.log" 2>&1
}
BENCH0=1
[ "$LINKS_BY" = profile-chip ] && BENCH0=0   # GPU 0's bench ran with the links
gpu_chain 0 "$FAST" $CHIP0 1,2 $BENCH0 & a=$!
gpu_chain 1 "$SLOW" $CHIP1 1 1 & b=$!
wait $a $b
for m in "${MODELS[@]}"; do
  for c in $CHIP0 $CHIP1; do
    [ -s "$R/profiles/$c/measured/$TAG-$m.csv" ] \
      || { stamp "stopped: no $m layer profile of $c (profile_gpu*.log)"; exit 1; }
  done
done
stamp "profiles done"

# ---- 4, 5. plans, runs, validation ---------------------------------------------------------------------
search() {  # $1 = model, $2 = plan name, $3 = cluster, $4... = search options
  local m=$1 name=$2 cluster=$3
  shift 3
  set_model "$m"
  timeout 150 $A search "$MODEL_FILE" "${MARGS[@]}" --seq-len $SEQ --dtype $DTYPE -c "$R/$cluster" \
    -b $BATCH --schedule 1f1b --no-idle -q "$@" -o "$R/plan_$name.json" >> "$LOG" 2>&1
}
run_plan() {  # $1 = model, $2 = plan name
  local m=$1 plan="$R/plan_$2.json" envs=""
  if [ $(( $(date +%s) - T0 )) -gt "${LAST_RUN_BEFORE_S:-400}" ]; then
    stamp "$2 skipped: past ${LAST_RUN_BEFORE_S:-400} s, it would not finish within 9 minutes"
    return
  fi
  set_model "$m"
  [ "$DRY" != 1 ] && envs=$(python3 $HERE/mps_rank_env.py --gpu-of-node gpu0=0 \
    --gpu-of-node gpu1=1 --gpu-of-node gpu01=0 "$plan")
  # shellcheck disable=SC2086
  $A run "$plan" "$MODEL_FILE" --device $DEVICE "${BACKEND[@]}" $envs --steps $STEPS \
    --warmup $WARMUP --timeout 150 -o "$R/measured_$2.json" >> "$LOG" 2>&1 \
    || echo "== $2 failed" >> "$LOG"
  $A validate "$plan" "$R/measured_$2.json" -o "$R/validation_$2.json" >> "$LOG" 2>&1 \
    || echo "== validation of $2 failed" >> "$LOG"
  stamp "$2 done"
}
for m in "${MODELS[@]}"; do
  ok=()
  search "$m" "${m}_searched" cluster_pipeline.yaml --tp 1 --micro-batch-sizes "$MICRO" \
    && python3 $HERE/uniform_of.py "$R/plan_${m}_searched.json" "$R/plan_${m}_uniform.json" \
      >> "$LOG" 2>&1 \
    && python3 $HERE/plan_layout.py "$R/plan_${m}_searched.json" pipeline >> "$LOG" 2>&1 \
    && ok+=("${m}_searched" "${m}_uniform")
  search "$m" "${m}_tp2" cluster_tp.yaml --tp 2 --max-stages 1 --micro-batch-sizes "$MICRO" \
    && python3 $HERE/plan_layout.py "$R/plan_${m}_tp2.json" tp2 >> "$LOG" 2>&1 \
    && ok+=("${m}_tp2")
  search "$m" "${m}_dp2" cluster_dp.yaml --tp 1 --max-stages 1 --micro-batch-sizes "$MICRO_DP" \
    && python3 $HERE/plan_layout.py "$R/plan_${m}_dp2.json" dp2 >> "$LOG" 2>&1 \
    && ok+=("${m}_dp2")
  stamp "$m plans: ${ok[*]:-none} (a missing one: search or layout failed, run.log)"
  for name in "${ok[@]}"; do run_plan "$m" "$name"; done
done
python3 $HERE/analyse_runs.py "$R" > "$R/table.md" 2>> "$LOG" && cat "$R/table.md"
grep -E "median step|iteration:|failed|Error|STOP|not finite|GEMM self-check|bad" "$LOG"
