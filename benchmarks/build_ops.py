"""Builds only vs-iedvr's operator library, libiedvr_ops.so, into a folder: the one compiled part
that training needs. The whole package adds the inference engine and the VapourSynth plugin (and
needs VapourSynth's headers), several minutes more on a lent GPU machine whose minutes are few.

    python benchmarks/build_ops.py OUT_DIR [--cuda auto|0|1]

CUDA kernels are built for TORCH_CUDA_ARCH_LIST (set it to the GPU's own generation, as
benchmarks/device_train.sh does); MAX_JOBS sets the parallel compile jobs. The compiler flags are
those of setup.py's ops_extension(): keep the two in step. The library links torch's Python
bindings (torch.utils.cpp_extension.load's way), so it is for Python processes, not the plugin.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["csrc/ops/dcn_op.cpp", "csrc/ops/cpu/dcn_cpu.cpp", "csrc/ops/autocast/dcn_autocast.cpp"]
CUDA_SOURCES = ["csrc/ops/cuda/dcn_cuda.cu"]


def load_cuda_toolkit():
    """csrc/cuda_toolkit.py, setup.py's own toolkit lookup (csrc/ is not a package)."""
    spec = importlib.util.spec_from_file_location("cuda_toolkit", ROOT / "csrc" / "cuda_toolkit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_toolkit = load_cuda_toolkit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--cuda", choices=("auto", "0", "1"), default="auto",
                        help="build the CUDA kernels: when a toolkit is found (auto), always, never")
    args = parser.parse_args()
    cuda_toolkit.set_cuda_home()
    from torch.utils import cpp_extension  # reads CUDA_HOME on import

    with_cuda = args.cuda == "1" or (args.cuda == "auto" and cpp_extension.CUDA_HOME is not None)
    if with_cuda and cpp_extension.CUDA_HOME is None:
        raise SystemExit("--cuda 1 but no CUDA toolkit was found (set CUDA_HOME or put nvcc on PATH)")
    build_dir = args.out_dir / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    cpp_extension.load(
        name="libiedvr_ops",
        sources=[str(ROOT / s) for s in SOURCES + (CUDA_SOURCES if with_cuda else [])],
        extra_cflags=["-O3", "-fopenmp", "-fno-trapping-math"],
        extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr"],
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(d / "include") for d in cuda_toolkit.nvidia_wheel_dirs()] if with_cuda else [],
        build_directory=str(build_dir),
        with_cuda=with_cuda,
        is_python_module=False,  # loads it with torch.ops.load_library: a check that it links
    )
    shutil.copy2(build_dir / "libiedvr_ops.so", args.out_dir / "libiedvr_ops.so")
    import torch

    cuda = torch._C._dispatch_has_kernel_for_dispatch_key("iedvr::modulated_deform_conv2d", "CUDA")
    print(f"built {args.out_dir / 'libiedvr_ops.so'} in {time.time() - started:.0f} s "
          f"(CUDA kernels: {'yes, for ' + os.environ.get('TORCH_CUDA_ARCH_LIST', 'torch default') if cuda else 'no'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
