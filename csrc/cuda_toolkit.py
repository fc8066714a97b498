"""Where the CUDA toolkit and torch's CUDA libraries are, for compiling csrc/: read by setup.py
(the package) and benchmarks/build_ops.py (the operator library alone, on a lent GPU machine),
so that both builds find the same toolkit. Standard library only: the GPU machine's Python has
its own torch and setuptools, of unknown versions."""

import importlib.util
import os
import shutil
from pathlib import Path


def find_cuda_home() -> str | None:
    """The CUDA toolkit root. torch guesses it from `which nvcc`, which is wrong when nvcc on PATH
    is a wrapper script (as /usr/local/bin/nvcc is on some machines): prefer a root that has the
    runtime library to link against."""
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    candidates += sorted(Path("/usr/local").glob("cuda*"), reverse=True)
    for root in candidates:
        if (root / "bin" / "nvcc").exists() and list(root.glob("lib*/libcudart.so")):
            return str(root)
    return None


def set_cuda_home() -> None:
    """CUDA_HOME for torch.utils.cpp_extension, which reads it on import: call this first. A
    CUDA_HOME or CUDA_PATH already set is left as it is."""
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        cuda_home = find_cuda_home()
        if cuda_home:
            os.environ["CUDA_HOME"] = cuda_home


def nvidia_wheel_dirs() -> list[Path]:
    """site-packages/nvidia/cu13 (or cu12): headers and libraries of torch's CUDA wheels, which a
    bare toolkit may lack."""
    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in spec.submodule_search_locations] if spec else []
    return sorted(d for root in roots for d in root.glob("cu[0-9]*") if (d / "include").is_dir())
