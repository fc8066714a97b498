"""Times the builds of the deformable convolution's CPU loops (x86-64 baseline, AVX2+FMA, AVX-512)
against each other in one process, at EDVR-M shapes with the network's channels-last tensors.

    .venv/bin/python benchmarks/bench_dcn_loops.py [--rounds 9 --height 180 --width 320]

The builds this CPU can run take turns within each round (IEDVR_CPU_ISA, read at every call, picks
one), so that a machine whose speed drifts slows them alike; each figure is the median over the
rounds, and each ratio the median of the rounds' ratios against the baseline build.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import vs_iedvr.ops  # noqa: F401  (loads the operator library)

# bench_dcn.py beside this file (python -P leaves the script's folder off the path)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dcn import add_shape_arguments  # noqa: E402

LOOPS = ("baseline", "avx2", "avx512")


def runnable_loops() -> list[str]:
    runnable = []
    for loops in LOOPS:
        os.environ["IEDVR_CPU_ISA"] = loops
        if torch.ops.iedvr.cpu_sampling_loops() == [loops, loops]:
            runnable.append(loops)
    return runnable


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(parser)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    loops = runnable_loops()
    n, c, h, w, dg = args.batch, args.channels, args.height, args.width, args.deformable_groups
    conv_args = ([1, 1], [1, 1], [1, 1], 1, dg)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; builds this CPU runs: "
          f"{', '.join(loops)}")
    print(f"shape: batch {n}, {c} channels, {h}x{w}, 3x3, {dg} deformable groups, channels-last; "
          f"{args.rounds} rounds, the builds in turn within each")
    print()
    print(f"{'what':34s} {'build':>9s} {'median ms':>10s} {'vs baseline':>12s}")
    torch.manual_seed(0)
    channels_last = torch.channels_last
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        x = torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=channels_last)
        offset = (torch.randn(n, 2 * dg * 9, h, w) * 2).to(dtype).contiguous(memory_format=channels_last)
        mask = torch.sigmoid(torch.randn(n, dg * 9, h, w)).to(dtype).contiguous(memory_format=channels_last)
        weight = (torch.randn(c, c, 3, 3) * 0.05).to(dtype).contiguous(memory_format=channels_last)
        bias = torch.zeros(c, dtype=dtype)
        grad = torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=channels_last)
        passes = {
            "forward": lambda: torch.ops.iedvr.modulated_deform_conv2d(
                x, offset, mask, weight, bias, *conv_args),
            "backward, all gradients": lambda: torch.ops.iedvr.modulated_deform_conv2d_backward(
                grad, x, offset, mask, weight, bias, *conv_args),
        }
        for label, fn in passes.items():
            times = {build: [] for build in loops}
            for round_ in range(args.rounds + 1):
                order = loops[round_ % len(loops):] + loops[:round_ % len(loops)]
                for build in order:
                    os.environ["IEDVR_CPU_ISA"] = build
                    with torch.no_grad():
                        elapsed = seconds(fn)
                    if round_ > 0:  # the first round warms up every build
                        times[build].append(elapsed)
            for build in loops:
                ratio = statistics.median(b / t for b, t in zip(times["baseline"], times[build]))
                print(f"{label + ' (' + name + ')':34s} {build:>9s} "
                      f"{statistics.median(times[build]) * 1e3:10.1f} {ratio:11.2f}x")


if __name__ == "__main__":
    main()
