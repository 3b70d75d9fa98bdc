#!/usr/bin/env bash
# One run on an H200 machine: chip micro-benchmarks and layer profiles, alone and as two
# concurrent CUDA MPS clients (75% and 25% of the SMs; shared/reference/gpu-emulation.md recipe).
# Results go to $OUT/r and come back as one archive ($OUT/results.tgz) plus the log.
set -u
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
A="python3 -m autosplit"
GPT="experiments/models/gpt.py -a size=1.3b --seq-len 2048 --micro-batch 1,2,4"
LLAMA="experiments/models/llama.py -a size=7b --seq-len 2048 --micro-batch 1,2,4"
COMMON="--device cuda --repeats 10 --warmup 3"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,memory.used,memory.total --format=csv > $R/nvidia-smi.csv 2>&1
python3 -c "import torch;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
[ -f profiles/h200/chip.yaml ] && cp profiles/h200/chip.yaml $R/h200-chip.yaml
T0=$(date +%s)
(sleep 530; tar czf $OUT/results.tgz -C $OUT r) &  # partial results if the limit nears
WATCHDOG=$!
# ---- the whole GPU ---------------------------------------------------------------------------
$A profile-chip --device cuda --chip h200 -o $R/h200-chip-bench.csv --write-chip --chip-file $R/h200-chip.yaml
$A profile $GPT $COMMON --chip h200 --tp 1,2,4,8 -o $R/h200-gpt-1.3b.csv
$A profile $LLAMA $COMMON --chip h200 --tp 1,2,4,8 -o $R/h200-llama-7b.csv
$A profile $GPT $COMMON --chip h200 -o $R/h200-gpt-1.3b-repeat.csv
echo "alone phase: $(( $(date +%s) - T0 )) s"
# ---- two concurrent MPS clients ------------------------------------------------------------
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
nvidia-cuda-mps-control -d
client() {  # $1 = SM percentage, $2 = the other client's percentage
  local p=$1 o=$2
  cp profiles/h200-mps$p/chip.yaml $R/h200-mps$p-chip.yaml
  export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p
  {
    $A profile-chip --device cuda --chip h200-mps$p -o $R/h200-mps$p-chip-bench.csv --write-chip --chip-file $R/h200-mps$p-chip.yaml
    $A profile $GPT $COMMON --chip h200-mps$p -o $R/h200-mps$p-gpt-1.3b.csv
    $A profile $LLAMA $COMMON --chip h200-mps$p -o $R/h200-mps$p-llama-7b.csv
    touch /tmp/done$p
    [ -f /tmp/done$o ] || python3 experiments/profiling/gpu_load.py /tmp/done$o
  } > $R/mps$p.log 2>&1
}
T1=$(date +%s)
client 75 25 & P75=$!
client 25 75 & P25=$!
wait $P75 $P25  # not a bare wait: it would also wait for the watchdog below
echo quit | nvidia-cuda-mps-control
echo "mps phase: $(( $(date +%s) - T1 )) s"
tail -n 30 $R/mps75.log $R/mps25.log
kill $WATCHDOG 2>/dev/null
tar czf $OUT/results.tgz -C $OUT r
