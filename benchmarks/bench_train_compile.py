"""A training step of the default weights' recipe, eager against `torch.compile` (inductor),
alternated step by step in one process: does compiling the network pay on this machine?

    .venv/bin/python -P benchmarks/bench_train_compile.py [--rounds 14]

iedvr-m x4, a batch of 4 windows of five 32x32 frames (random pixels: the step's arithmetic does
not depend on them), channels-last weights as `train` keeps them, bfloat16 autocast, Charbonnier
loss, Adam. Both sides share the weights and the optimiser; they alternate because this
machine's speed drifts by up to 1.6x within minutes. It prints the first compiled step's seconds
(the compilation), the median step of each and the median of the pairs' time ratios. The
deformable convolution is the library's custom operator in both; the compiled network calls it
through its registered fake kernel and autograd formula.
"""

import argparse
import statistics
import sys
import time

import torch

from vs_iedvr.network import build, channels_last_format
from vs_iedvr.training.loss import charbonnier_loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=14, help="steps of each, in turn (default 14)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    torch.manual_seed(0)
    network = build("iedvr-m", scale=4).train()
    for parameter in network.parameters():
        parameter.data = parameter.data.contiguous(memory_format=channels_last_format(parameter))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, betas=(0.9, 0.99))
    sides = {"eager": network, "compiled": torch.compile(network)}
    low, high = torch.rand(4, 5, 3, 32, 32), torch.rand(4, 3, 128, 128)

    def step(model) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(low)
        loss = charbonnier_loss(out.float(), high)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    print(f"first compiled step (the compilation): {step(sides['compiled']):.1f} s", flush=True)
    for _ in range(2):
        for model in sides.values():
            step(model)
    times = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, model in sides.items():
            times[name].append(step(model))
    for name, seconds in times.items():
        print(f"{name:9s} median step {statistics.median(seconds) * 1000:7.1f} ms")
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
    print(f"compiled / eager steps/s, median of {args.rounds} pairs: {statistics.median(ratios):.3f}x "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
