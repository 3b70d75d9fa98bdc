#!/usr/bin/env bash
# Re-measure the committed full-H200 layer profiles (profiles/h200/measured/, no MPS) with the
# current profiler, whose backward adds into existing weight gradients (docs/profiles.md
# "Timing"). Same arguments as the rows' `command` column; output folder $1 (default $OUT).
#   bash experiments/runtime/reprofile_h200.sh /tmp/out
# then copy <out>/gpt-1.3b-s2048-bf16.csv and <out>/llama-7b-s2048-bf16.csv into
# profiles/h200/measured/.
set -uo pipefail
R=${1:-${OUT:-/tmp/autosplit-out}}
mkdir -p "$R"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 AUTOSPLIT_CACHE_DIR=/tmp/autosplit-cache
export COLUMNS=${COLUMNS:-200}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$R/run.log"; }

{
  nvidia-smi --query-gpu=name,driver_version --format=csv
  python3 -c 'import torch;print(torch.__version__)'
} > "$R/env.txt" 2>&1
cat "$R/env.txt"

profile() {  # $1 = model file stem, $2 = size, $3 = output name
  stamp "profile $1 size=$2"
  timeout 270 python3 -m autosplit profile "experiments/models/$1.py" --device cuda --chip h200 \
    --micro-batch 1,2,4 --tp 1,2,4,8 --seq-len 2048 --dtype bf16 --model-arg="size=$2" \
    --repeats 10 --warmup 3 -o "$R/$3" > "$R/${3%.csv}.log" 2>&1 \
    || stamp "profile $1 size=$2 failed (rc $?)"
  tail -n 40 "$R/${3%.csv}.log"
}
profile gpt 1.3b gpt-1.3b-s2048-bf16.csv
profile llama 7b llama-7b-s2048-bf16.csv
stamp done
