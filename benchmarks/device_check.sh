#!/usr/bin/env bash
# The GPU check, in one command, for a machine with an NVIDIA GPU, its own Python 3.12 with torch,
# and no internet (the workplace's lent device machine is one). It builds vs-iedvr with its CUDA
# kernels against that torch, runs the tests that touch the operator, the model file and the
# plugin (the CUDA ones included), then the GPU benchmark: FP16 at 320x180 and 960x540 input, and
# float32 at 320x180, and a torch.profiler table of the kernels of an FP16 frame at 320x180
# (benchmarks/profile_gpu.py). Logs go to $OUT (default /tmp/device-check).
#
# Here, once (needs the package index): fetch the wheels the GPU machine lacks into .whl/
#     benchmarks/device_check.sh --prepare
# There (about 6 minutes on 16 cores):
#     run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=590)
#
# Environment: PYTHON (default python3, the one with torch), TORCH_CUDA_ARCH_LIST (default: the
# GPU's own), MAX_JOBS (default: all cores), FRAMES (timed frames per benchmark, default 10).
set -uo pipefail
source "$(dirname "$0")/device_common.sh"

if [ "${1:-}" = "--prepare" ]; then
  ignore_in_git .whl
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl "vapoursynth>=74"
  ls -la .whl
  exit
fi

OUT=${OUT:-/tmp/device-check}
FRAMES=${FRAMES:-10}
mkdir -p "$OUT"

step "machine"
machine_summary

# Straight into the environment that holds torch (the machine is thrown away afterwards): the
# extensions' RUNPATH finds libtorch beside them in the same site-packages, as in a user's venv.
# (A venv on top of a venv would not see the outer one's torch.)
step "VapourSynth from .whl/, then vs-iedvr with CUDA kernels for this GPU"
"$PY" -m pip install --quiet --no-index --no-deps .whl/*.whl || exit 1
use_this_gpus_arch
IEDVR_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip install --no-index --no-deps \
  --no-build-isolation . >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
BIN=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
"$BIN/vapoursynth" config >/dev/null
(cd /tmp && "$BIN/vs-iedvr" selftest) 2>&1 | tail -3 | tee -a "$OUT/summary.txt"

step "tests: operator, model file, network, engine, plugin"
# -P: the repository root must not shadow the installed package (the source tree has no .so).
"$PY" -P -m pytest -q -p no:cacheprovider tests/test_dcn.py tests/test_dcn_export.py \
  tests/test_model_file.py tests/test_network.py tests/test_feature_cache.py \
  tests/test_block_reuse.py tests/test_plugin.py >"$OUT/tests.log" 2>&1
tail -15 "$OUT/tests.log" | tee -a "$OUT/summary.txt"

# The shipped model file was traced by a newer torch than some machines have: where it does not
# load, an untrained network of the same architecture costs the same to run.
MODEL=$(cd /tmp && "$PY" -c 'import vs_iedvr.bench as b; print(b.default_model() or "")')
if ! (cd /tmp && "$PY" -c "from vs_iedvr import model_file; model_file.load_model('$MODEL')" 2>/dev/null); then
  MODEL=/tmp/iedvr-m-untrained.pt
  (cd /tmp && "$BIN/vs-iedvr" export --arch iedvr-m --scale 4 --output "$MODEL" >/dev/null)
fi

bench() {
  step "bench $*"
  (cd /tmp && "$BIN/vs-iedvr" bench --device cuda --model "$MODEL" --frames "$FRAMES" "$@") \
    2>&1 | tee -a "$OUT/summary.txt"
}
bench --size 320x180 --fp16
bench --size 960x540 --fp16
bench --size 320x180 --no-fp16

# A script's own folder, not the repository root, heads its import path: the installed package
# (with its library) is the one imported.
step "profile: the kernels of an FP16 frame at 320x180"
"$PY" benchmarks/profile_gpu.py --device cuda --size 320x180 --fp16 --out-dir "$OUT" 2>&1 \
  | tail -25 | tee -a "$OUT/summary.txt"
step "done"
