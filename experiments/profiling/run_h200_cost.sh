#!/usr/bin/env bash
# The compute-surface run on one H200 (under 9 minutes): the profile-chip kernel sweep and link
# benchmark on the whole GPU, GPT block profiles at hidden 2048 and 4096 to compare the
# compute model with, then the sweep under two concurrent CUDA MPS clients (50 % and 20 % of
# the SMs) with the same GPT profiles. Everything goes to $OUT/r; $OUT/results.tgz holds it
# (also written part-way if the time limit nears).
#
#   bash experiments/profiling/run_h200_cost.sh            # on the H200 machine, $OUT set
#   python experiments/profiling/analyze_cost.py --results <unpacked>/r > table.md
#   python experiments/profiling/analyze_cost.py --results <unpacked>/r --install
set -u
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
A="python3 -m autosplit"
COMMON="--device cuda --repeats 10 --warmup 3 --seq-len 2048 --micro-batch 1,2,4"
log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,memory.total --format=csv > $R/nvidia-smi.csv 2>&1
python3 -c "import torch;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
for c in h200 h200-mps50 h200-mps20; do cp profiles/$c/chip.yaml $R/$c-chip.yaml; done
(sleep 510; tar czf $OUT/results.tgz -C $OUT r) &  # partial results if the limit nears
WATCHDOG=$!
# ---- the whole GPU ---------------------------------------------------------------------------
log "profile-chip h200 (bench, sweep, links)"
$A profile-chip --device cuda --chip h200 --links -o $R/h200-chip-bench.csv --write-chip --chip-file $R/h200-chip.yaml > $R/h200-chip.log 2>&1
tail -n 25 $R/h200-chip.log
log "GPT-1.3B blocks"
$A profile experiments/models/gpt.py -a size=1.3b $COMMON --chip h200 -o $R/h200-gpt-1.3b.csv > $R/h200-gpt-1.3b.log 2>&1
log "GPT-6.7B blocks"
$A profile experiments/models/gpt.py -a size=6.7b $COMMON --chip h200 -o $R/h200-gpt-6.7b.csv > $R/h200-gpt-6.7b.log 2>&1
log "alone phase done"
# ---- two concurrent MPS clients ------------------------------------------------------------
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
nvidia-cuda-mps-control -d
client() {  # $1 = SM percentage, $2 = the other client's percentage
  local p=$1 o=$2
  export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p
  {
    $A profile-chip --device cuda --chip h200-mps$p -o $R/h200-mps$p-chip-bench.csv --write-chip --chip-file $R/h200-mps$p-chip.yaml
    $A profile experiments/models/gpt.py -a size=1.3b $COMMON --chip h200-mps$p -o $R/h200-mps$p-gpt-1.3b.csv
    touch /tmp/done$p
    # keep loading the GPU until the other client is done, so it is measured under load
    [ -f /tmp/done$o ] || python3 experiments/profiling/gpu_load.py /tmp/done$o
  } > $R/mps$p.log 2>&1
}
rm -f /tmp/done50 /tmp/done20
client 50 20 & P50=$!
client 20 50 & P20=$!
wait $P50 $P20  # not a bare wait: it would also wait for the watchdog
echo quit | nvidia-cuda-mps-control
log "mps phase done"
grep -h -A8 "compute surface fitted" $R/mps50.log $R/mps20.log
kill $WATCHDOG 2>/dev/null
tar czf $OUT/results.tgz -C $OUT r
log "wrote $OUT/results.tgz"
