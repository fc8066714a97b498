"""Training steps of the default weights' recipe, two variants alternated step by step in one
process: this machine's speed drifts by up to 1.6x within minutes, and only steps taken in turn
compare. Shared by bench_align_batching.py and bench_train_compile.py.

The recipe on random pixels (a step's arithmetic does not depend on them): iedvr-m x4, windows of
five 32x32 frames, channels-last weights as `train` keeps them, bfloat16 autocast, Charbonnier
loss, Adam; both variants share the weights and the optimiser.
"""

import statistics
import time
from typing import Callable

import torch

from vs_iedvr.network import build, channels_last_format
from vs_iedvr.training.loss import charbonnier_loss


class RecipeStep:
    """The network, its optimiser and a batch; `run(model)` times one step through `model` (the
    network itself or a wrapper of it, such as its compiled form)."""

    def __init__(self, batch: int = 4):
        torch.manual_seed(0)
        self.network = build("iedvr-m", scale=4).train()
        for parameter in self.network.parameters():
            parameter.data = parameter.data.contiguous(memory_format=channels_last_format(parameter))
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.low, self.high = torch.rand(batch, 5, 3, 32, 32), torch.rand(batch, 3, 128, 128)

    def run(self, model: torch.nn.Module | None = None) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = (self.network if model is None else model)(self.low)
        loss = charbonnier_loss(out.float(), self.high)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - started


def alternate(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each side's steps, taken in turn, after two warm-up steps of each (oneDNN makes
    its kernels at their first call)."""
    for _ in range(2):
        for step in sides.values():
            step()
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, step in sides.items():
            times[name].append(step())
    return times


def report(times: dict[str, list[float]], slower: str, faster: str) -> None:
    """Each side's median step and the median of the pairs' ratios, `faster` over `slower`."""
    for name, seconds in times.items():
        print(f"{name:15s} median step {statistics.median(seconds) * 1000:7.1f} ms")
    ratios = [s / f for s, f in zip(times[slower], times[faster])]
    print(f"{faster} / {slower} steps/s, median of {len(ratios)} pairs: "
          f"{statistics.median(ratios):.3f}x (range {min(ratios):.3f}-{max(ratios):.3f})")
