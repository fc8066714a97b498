"""Times iedvr::modulated_deform_conv2d on the CPU at EDVR-M shapes, next to the pure-PyTorch
reference and a plain convolution of the same size, in one run.

    .venv/bin/python benchmarks/bench_dcn.py [--height 180 --width 320 --repeats 7]
    .venv/bin/python benchmarks/bench_dcn.py --batch 4 --height 32 --width 32   # a training step's

GFLOP/s count the operator's FLOPs (vs_iedvr.ops.modulated_deform_conv2d_flops); the plain
convolution's count its GEMM only. The peak is the measured float32 (and bfloat16) matrix-multiply
rate of this machine with torch's threads.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vs_iedvr
from vs_iedvr.ops import modulated_deform_conv2d_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dcn_reference import modulated_deform_conv2d_reference  # noqa: E402


def median_seconds(fn, repeats):
    fn()  # warm-up: allocations, thread pool, lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_peak(dtype, sizes=(1024, 2048, 3072), repeats=5):
    """The best median rate of square matrix multiplies: the machine's practical peak."""
    rates = []
    for size in sizes:
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        rates.append(2 * size**3 / median_seconds(lambda: torch.mm(a, b), repeats))
    return max(rates)


def add_shape_arguments(parser):
    """The operator's shape, EDVR-M's by default (also for bench_dcn_loops.py)."""
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--deformable-groups", type=int, default=8)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(parser)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference")
    args = parser.parse_args()

    torch.manual_seed(0)
    n, c, h, w, dg = args.batch, args.channels, args.height, args.width, args.deformable_groups
    conv_args = ([1, 1], [1, 1], [1, 1], 1, dg)
    flops = modulated_deform_conv2d_flops(n, c, c, h, w, (3, 3))
    conv_flops = 2 * n * c * c * 9 * h * w
    peaks = {torch.float32: gemm_peak(torch.float32), torch.bfloat16: gemm_peak(torch.bfloat16)}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"shape: batch {n}, {c} channels, {h}x{w}, 3x3, {dg} deformable groups; "
          f"{args.repeats} runs, median")
    for dtype, peak in peaks.items():
        print(f"measured GEMM peak ({str(dtype).removeprefix('torch.')}): {peak / 1e9:.1f} GFLOP/s")
    print()
    print(f"{'what':42s} {'median ms':>10s} {'GFLOP/s':>9s} {'of peak':>8s} {'vs conv':>8s}")

    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        x = torch.randn(n, c, h, w, dtype=dtype)
        offset = (torch.randn(n, 2 * dg * 9, h, w) * 2).to(dtype)
        mask = torch.sigmoid(torch.randn(n, dg * 9, h, w)).to(dtype)
        weight = (torch.randn(c, c, 3, 3) * 0.05).to(dtype)
        bias = torch.zeros(c, dtype=dtype)
        out = torch.randn(n, c, h, w, dtype=dtype)
        peak = peaks[dtype]

        with torch.no_grad():
            conv_fwd = median_seconds(lambda: F.conv2d(x, weight, bias, 1, 1), args.repeats)
            dcn_fwd = median_seconds(
                lambda: torch.ops.iedvr.modulated_deform_conv2d(x, offset, mask, weight, bias, *conv_args),
                args.repeats)
        conv_bwd = median_seconds(
            lambda: torch.ops.aten.convolution_backward(
                out, x, weight, [c], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, True, True]),
            args.repeats)
        dcn_bwd = median_seconds(
            lambda: torch.ops.iedvr.modulated_deform_conv2d_backward(
                out, x, offset, mask, weight, bias, *conv_args),
            args.repeats)
        rows = [
            (f"conv2d forward ({name})", conv_fwd, conv_flops, conv_fwd),
            (f"iedvr dcn forward ({name})", dcn_fwd, flops, conv_fwd),
            (f"conv2d backward, all grads ({name})", conv_bwd, 2 * conv_flops, conv_bwd),
            (f"iedvr dcn backward, all grads ({name})", dcn_bwd, 3 * flops, conv_bwd),
        ]
        if dtype == torch.float32 and not args.no_reference:
            with torch.no_grad():
                ref_fwd = median_seconds(
                    lambda: modulated_deform_conv2d_reference(x, offset, mask, weight, bias, *conv_args),
                    max(1, args.repeats // 2))
            rows.insert(2, (f"reference forward ({name})", ref_fwd, flops, conv_fwd))
        for label, seconds, work, conv_seconds in rows:
            rate = work / seconds
            print(f"{label:42s} {seconds * 1e3:10.1f} {rate / 1e9:9.1f} {rate / peak:8.0%} "
                  f"{seconds / conv_seconds:7.2f}x")


if __name__ == "__main__":
    main()
