# Sourced by the H200 scripts (from the repository root): starts the CUDA MPS control daemon,
# its pipe and log folders under /tmp, and stops it when the sourcing script exits. Without
# the daemon, clients given CUDA_MPS_ACTIVE_THREAD_PERCENTAGE time-slice the whole GPU instead
# of keeping to their share of the SMs.
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mpslog
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d
trap 'echo quit | nvidia-cuda-mps-control' EXIT
