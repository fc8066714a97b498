"""What the autoloaded plugin costs every VapourSynth script: the start-up time with it installed,
the time to load its library alone, and whether libtorch got loaded (it must not be, until
core.iedvr.Upscale is first called). Each measurement runs in a fresh process; medians.

    .venv/bin/python benchmarks/bench_startup.py [--runs 7]
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import vapoursynth

PLUGIN = Path(vapoursynth.__file__).parent / "plugins" / "iedvr" / "libiedvr_vs.so"

START_UP = """
import time
start = time.perf_counter()
import vapoursynth as vs
vs.core.std
print((time.perf_counter() - start) * 1e3)
"""

LOAD_PLUGIN = f"""
import ctypes, time
start = time.perf_counter()
ctypes.CDLL({str(PLUGIN)!r})
print((time.perf_counter() - start) * 1e3)
"""

LIBTORCH_MAPPED = """
import vapoursynth as vs
assert hasattr(vs.core, "iedvr"), "the iedvr plugin was not autoloaded"
print("libtorch" in open("/proc/self/maps").read())
"""


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    start_up = statistics.median(float(run(START_UP)) for _ in range(args.runs))
    load = statistics.median(float(run(LOAD_PLUGIN)) for _ in range(args.runs))
    print(f"import vapoursynth; vs.core.std (iedvr plugin autoloaded): {start_up:.1f} ms")
    print(f"loading the plugin library alone: {load:.2f} ms")
    print(f"libtorch loaded at start-up: {run(LIBTORCH_MAPPED)}")


if __name__ == "__main__":
    main()
