#!/usr/bin/env bash
# Do the MPS chips' layer profiles carry the neighbours' load? For each share, on one H200
# under CUDA MPS, in one call:
#   1. the model's training step alone and next to every other share's step
#      (contention_bench.py --no-single);
#   2. `autosplit profile` of the same model alone, and next to every other share running the
#      model's step — the loads started first and the profile begun only once each reports it
#      runs (gpu_load.py --ready), which run_h200_mix.sh does not wait for;
#   3. the profiles' sum over the model's units set against the steps (profile_bias.py).
#   OUT=/tmp/out SHARES="90 20 10" MODEL_ARGS="size=2.7b layers=8 hidden=2048 heads=16" \
#     bash experiments/runtime/profile_bias_h200.sh
set -uo pipefail
OUT=${OUT:-/tmp/autosplit-out}
read -r -a SHARES <<< "${SHARES:-90 20 10}"
read -r -a WORDS <<< "${MODEL_ARGS:-size=2.7b layers=8 hidden=2048 heads=16}"
MODEL=${MODEL_FILE:-experiments/models/gpt.py}
SEQ=${SEQ:-2048}
R=$OUT/profile-bias-$(IFS=-; echo "${SHARES[*]}")
mkdir -p "$R"
LOAD_ARGS=(--model "$MODEL" --seq-len "$SEQ")
PROF_ARGS=()
for w in "${WORDS[@]}"; do LOAD_ARGS+=(--model-arg "$w"); PROF_ARGS+=(-a "$w"); done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=/tmp/autosplit-cache
# shellcheck source=experiments/runtime/mps_daemon.sh
source experiments/runtime/mps_daemon.sh
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$R/run.log"; }
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" > "$R/env.txt" 2>&1

timeout 300 python3 experiments/runtime/contention_bench.py --shares "${SHARES[@]}" --no-single \
  "${LOAD_ARGS[@]}" --repeats "${REPEATS:-8}" -o "$R/contention.json" 2>&1 | tee -a "$R/run.log"
stamp "steps timed"

profile() {  # $1 = share, $2 = alone | loaded, $3 = what the others ran (--load)
  CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$1 timeout 120 python3 -m autosplit profile "$MODEL" \
    "${PROF_ARGS[@]}" --seq-len "$SEQ" --dtype bf16 --micro-batch 1 --device cuda \
    --chip "h200-mps$1" --repeats 5 --warmup 2 --load "$3" -o "$R/profile_$2_$1.csv" \
    >> "$R/profile_$2_$1.log" 2>&1 || stamp "profile $2 at $1 % failed"
}
for p in "${SHARES[@]}"; do
  profile "$p" alone "none"
  others=()
  for o in "${SHARES[@]}"; do [ "$o" != "$p" ] && others+=("$o"); done
  rm -f "$R"/stop "$R"/ready*
  for o in "${others[@]}"; do
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$o python3 experiments/profiling/gpu_load.py "$R/stop" \
      --ready "$R/ready$o" "${LOAD_ARGS[@]}" --limit-s 200 &
  done
  for o in "${others[@]}"; do
    for _ in $(seq 600); do [ -f "$R/ready$o" ] && break; sleep 0.2; done
  done
  profile "$p" loaded "$(IFS=,; echo "${others[*]}"): the model's step"
  touch "$R/stop"; wait
  stamp "profiles at $p % done"
done
rm -f "$R"/stop "$R"/ready*
python3 experiments/runtime/profile_bias.py "$R" "${WORDS[@]}" | tee "$R/table.md"
