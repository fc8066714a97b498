"""Builds the compiled part of vs-iedvr against the installed torch (so install it with
`pip install --no-build-isolation .`; the `./run` script does that for you, and `./run wheel`
makes a binary wheel that installs without a compiler).

libiedvr_ops.so holds the iedvr operators (TORCH_LIBRARY). Python loads it with
torch.ops.load_library and the VapourSynth plugin will dlopen the same file, so the operator
namespace is registered once per process.

Environment:
  IEDVR_CUDA=auto|1|0   build the CUDA kernels when nvcc is found (auto), always (1) or never (0)
  TORCH_CUDA_ARCH_LIST   GPU generations to compile for (default: Turing to Blackwell, PTX for newer)
  MAX_JOBS               parallel compile jobs
"""

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel


# The toolkit lookup shared with benchmarks/build_ops.py (csrc/ is not a package: by file path).
_toolkit_spec = importlib.util.spec_from_file_location(
    "cuda_toolkit", Path(__file__).resolve().parent / "csrc" / "cuda_toolkit.py")
cuda_toolkit = importlib.util.module_from_spec(_toolkit_spec)
_toolkit_spec.loader.exec_module(cuda_toolkit)
cuda_toolkit.set_cuda_home()

from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME on import)

# Turing (RTX 20xx) to Hopper (H100), and Blackwell: 10.0 (B200; its code also runs on 10.3, B300)
# and 12.0 (RTX 50xx; also runs on 12.1). The PTX of 9.0 is compiled on the fly by the driver for
# GPUs without code of their own here (11.0, Jetson Thor, and later generations); PTX of 12.0 would
# not serve 10.x or 11.0.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX;10.0;12.0"


def build_cuda() -> bool:
    choice = os.environ.get("IEDVR_CUDA", "auto")
    if choice not in ("auto", "0", "1"):
        raise SystemExit(f"IEDVR_CUDA must be auto, 0 or 1, got {choice!r}")
    nvcc_found = cpp_extension.CUDA_HOME is not None and (
        Path(cpp_extension.CUDA_HOME, "bin", "nvcc").exists() or shutil.which("nvcc") is not None
    )
    if choice == "1" and not nvcc_found:
        raise SystemExit("IEDVR_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME or put nvcc on PATH)")
    return choice != "0" and nvcc_found


def ops_extension():
    sources = [
        "csrc/ops/dcn_op.cpp",
        "csrc/ops/cpu/dcn_cpu.cpp",
        "csrc/ops/autocast/dcn_autocast.cpp",
    ]
    # -fno-trapping-math lets GCC vectorise the branch-free sampling loops (their float-to-int
    # conversions are otherwise treated as possibly trapping); nothing here reads FP exception flags.
    compile_args = {"cxx": ["-O3", "-fopenmp", "-fno-trapping-math"]}
    # The library sits in site-packages/vs_iedvr/, torch's libraries in site-packages/torch/lib/:
    # the RUNPATH lets the VapourSynth plugin dlopen it without Python having loaded torch first.
    link_args = ["-fopenmp", "-Wl,-rpath,$ORIGIN/../torch/lib"]
    kwargs = dict(
        name="vs_iedvr.libiedvr_ops",
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        # No libtorch_python: the library must load in processes without Python.
        py_limited_api=True,
    )
    if build_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        # A bare CUDA toolkit may lack the library headers that torch's CUDA headers include
        # (cusparse.h, cublas_v2.h); the nvidia-* wheels that torch depends on carry them.
        kwargs["include_dirs"] = [str(d / "include") for d in cuda_toolkit.nvidia_wheel_dirs()]
        link_args += [f"-Wl,-rpath,$ORIGIN/../nvidia/{d.name}/lib" for d in cuda_toolkit.nvidia_wheel_dirs()]
        return cpp_extension.CUDAExtension(
            sources=sources + ["csrc/ops/cuda/dcn_cuda.cu"], **kwargs
        )
    return cpp_extension.CppExtension(sources=sources, **kwargs)


def engine_extension():
    """The libtorch inference engine that the VapourSynth filter loads on first use. With the CUDA
    toolkit it also reads the GPU's free memory and torch's CUDA allocator statistics (for the
    memory plan); without it, it runs on CUDA all the same."""
    kwargs = dict(
        name="vs_iedvr.libiedvr_engine",
        sources=["csrc/engine/engine_api.cpp", "csrc/engine/model_loading.cpp",
                 "csrc/engine/inference.cpp", "csrc/engine/memory_measurements.cpp"],
        extra_compile_args={"cxx": ["-O2"]},
        # --no-as-needed keeps libtorch.so (and through it the CUDA backend) loaded although the
        # engine names no symbol of it directly.
        extra_link_args=["-Wl,--no-as-needed", "-ltorch", "-Wl,--as-needed", "-ldl",
                         "-Wl,-rpath,$ORIGIN/../torch/lib"],
        py_limited_api=True,
    )
    if build_cuda():
        kwargs["define_macros"] = [("IEDVR_WITH_CUDA", None)]
        kwargs["include_dirs"] = [str(d / "include") for d in cuda_toolkit.nvidia_wheel_dirs()]
        kwargs["extra_link_args"] += [f"-Wl,-rpath,$ORIGIN/../nvidia/{d.name}/lib"
                                      for d in cuda_toolkit.nvidia_wheel_dirs()]
        return cpp_extension.CUDAExtension(**kwargs)
    return cpp_extension.CppExtension(**kwargs)


def vapoursynth_plugin_extension():
    """The autoloaded VapourSynth plugin: no libtorch, so that it costs scripts nothing."""
    import vapoursynth

    return Extension(
        name="vapoursynth.plugins.iedvr.libiedvr_vs",
        sources=["csrc/vsfilter/vs_filter.cpp", "csrc/vsfilter/engine_library.cpp",
                 "csrc/vsfilter/model_files.cpp"],
        include_dirs=[vapoursynth.get_include()],
        extra_compile_args=["-O2", "-std=c++17", "-fvisibility=hidden"],
        extra_link_args=["-ldl"],
        py_limited_api=True,
    )


def runtime_requirements() -> list[str]:
    """The libraries link libtorch's C++ API, which has no stable ABI between releases: they run
    only with the torch release they were compiled against, so the package requires exactly that
    one. Pinned by its public version (2.14.1 of 2.14.1+cu130), which pip also accepts for that
    release's builds with a local label. Libraries built with the CUDA kernels also need torch's
    CUDA libraries, which a CPU-only torch lacks."""
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", "vapoursynth>=74", "numpy", "ninja", "vsutil"]


class PlatformWheel(bdist_wheel):
    """Tags the wheel py3-none-<platform>: the compiled libraries never touch Python's C API (they
    are loaded by dlopen from VapourSynth and torch.ops.load_library, and Python >= 3.12 is
    required by the metadata), so one wheel serves every Python version, as the
    vapoursynth-bestsource wheel does."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    ext_modules=[ops_extension(), engine_extension(), vapoursynth_plugin_extension()],
    install_requires=runtime_requirements(),
    cmdclass={
        "build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True),
        "bdist_wheel": PlatformWheel,
    },
)
