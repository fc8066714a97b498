"""What 16-bit inference means on each device, and when it is the default: the same rule as the
engine (csrc/engine/model_loading.cpp, cpu_features.h), for the Python side (benchmarks, evaluation).

float16 on CUDA; bfloat16 on the CPU, where AVX512-BF16 and AMX units compute it (float16 would be
emulated). It is the default where the device computes it natively: every CUDA GPU, and CPUs
with AVX512-BF16 or AMX (elsewhere bfloat16 is emulated and slower than float32).
"""

import functools
import os

import torch


def sixteen_bit(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def cpu_has_native_bfloat16() -> bool:
    """As the engine decides (csrc/engine/cpu_features.h): IEDVR_CPU_BFLOAT16=0 or 1 overrides
    the CPU's flags, so that a machine with the units can run as one without them does."""
    forced = os.environ.get("IEDVR_CPU_BFLOAT16")
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError("IEDVR_CPU_BFLOAT16 must be 0 or 1 (whether the CPU computes "
                             f"bfloat16 natively), got {forced!r}")
        return forced == "1"
    return _cpu_flags_have_native_bfloat16()


@functools.cache
def _cpu_flags_have_native_bfloat16() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def default_fp16(device: torch.device) -> bool:
    return device.type == "cuda" or cpu_has_native_bfloat16()
