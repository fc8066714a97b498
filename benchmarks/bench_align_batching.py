"""A training step with PCD alignment one frame at a time against all the window's frames in one
batch (IEDVR.align_frame_by_frame, align_in_one_batch), alternated step by step in one process:
this machine's speed drifts by up to 1.6x within minutes, and only steps taken in turn compare.

    .venv/bin/python -P benchmarks/bench_align_batching.py [--rounds 14] [--batch 4] [--threads 2]

The default weights' recipe on random pixels (the arithmetic does not depend on them): iedvr-m
x4, windows of five 32x32 frames, channels-last weights, bfloat16 autocast, Charbonnier loss,
Adam. Prints the median step of each and the median of the pairs' time ratios.

Also the way to check that a step's time is proportional to its work rather than to its number
of calls: `--threads 1` with `--batch 1` and `--batch 4` (four times the pixels, the same calls).
"""

import argparse
import statistics
import sys
import time

import torch

from vs_iedvr.network import IEDVR, build, channels_last_format
from vs_iedvr.training.loss import charbonnier_loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=14, help="steps of each, in turn (default 14)")
    parser.add_argument("--batch", type=int, default=4, help="windows per step (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    if min(args.rounds, args.batch, args.threads) < 1:
        parser.error("--rounds, --batch and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = build("iedvr-m", scale=4).train()
    for parameter in network.parameters():  # as `train` keeps them
        parameter.data = parameter.data.contiguous(memory_format=channels_last_format(parameter))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, betas=(0.9, 0.99))
    low, high = torch.rand(args.batch, 5, 3, 32, 32), torch.rand(args.batch, 3, 128, 128)
    # A training step records gradients, so align_window takes one batch; each side pins its way.
    sides = {"frame by frame": IEDVR.align_frame_by_frame, "one batch": IEDVR.align_in_one_batch}
    chooser = IEDVR.align_window

    def step(align) -> float:
        IEDVR.align_window = align
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = network(low)
        loss = charbonnier_loss(out.float(), high)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    for _ in range(2):  # warm-up: oneDNN's kernels are made at their first call
        for align in sides.values():
            step(align)
    times = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, align in sides.items():
            times[name].append(step(align))
    IEDVR.align_window = chooser
    for name, seconds in times.items():
        print(f"{name:15s} median step {statistics.median(seconds) * 1000:7.1f} ms")
    ratios = [a / b for a, b in zip(times["frame by frame"], times["one batch"])]
    print(f"one batch / frame by frame steps/s, median of {args.rounds} pairs: "
          f"{statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
