# Sourced by benchmarks/device_check.sh and benchmarks/device_train.sh: what both need on a lent
# GPU machine (its own Python with torch, no internet) and in their --prepare here.
# Sets PY (the python that holds torch: $PYTHON, default python3) and works from the repository root.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}

# A line for the log and for $OUT/summary.txt (OUT must be set).
step() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

# Folders that travel to the machine only when a call carries them: ignored by git here.
ignore_in_git() {
  mkdir -p .git/info
  grep -qx "/$1/" .git/info/exclude 2>/dev/null || echo "/$1/" >>.git/info/exclude
}

machine_summary() {
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda)'
    nvcc --version | tail -1
    echo "$(nproc) cores"; } 2>&1 | tee -a "$OUT/summary.txt"
}

# CUDA kernels for this GPU's generation only (setup.py's default list compiles seven): one nvcc
# pass instead of seven, minutes of a lent machine saved.
use_this_gpus_arch() {
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    export TORCH_CUDA_ARCH_LIST
  fi
}
