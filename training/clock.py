"""The wall clock's part in a run: the time budget and the timed checkpoints."""

import time

import torch
import torch.distributed as dist

from .config import TrainConfig
from .processes import Processes


class Clock:
    """The wall clock's part in a run: the time budget's deadline and annealing, and the timed
    checkpoints. Under torchrun every process reads rank 0's clock, so that all anneal and stop
    at the same step (the loop's one synchronisation per step, and only with a time budget).

    A run interrupted before its deadline resumes `spent` seconds into the budget (what its
    checkpoint's steps took), with the annealing begun where it began: the same deadline and the
    same cosine. A run resumed after its deadline is a new cycle, over a budget of its own."""

    def __init__(self, config: TrainConfig, run_started: float, processes: Processes,
                 spent: float = 0.0, annealing_began: float | None = None):
        self.config, self.processes = config, processes
        self.started = run_started - spent  # the budget's second 0
        self.deadline = None
        if config.time_budget_minutes:  # rank 0's start: one deadline for every process
            self.started = self.rank_0s(self.started)
            self.deadline = self.started + 60 * config.time_budget_minutes
        self.annealing_started = None if annealing_began is None else self.started + annealing_began
        self.next_checkpoint = None
        if config.checkpoint_every_minutes:
            self.next_checkpoint = self.now() + 60 * config.checkpoint_every_minutes

    def now(self) -> float:
        return self.rank_0s(time.time()) if self.deadline is not None else time.time()

    def rank_0s(self, value: float) -> float:
        """Rank 0's value under torchrun (every process must call this at the same point)."""
        if not self.processes.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.processes.device)
        dist.broadcast(tensor, 0)
        return tensor.item()

    def annealing_progress(self, step: int, now: float) -> float | None:
        """The share of the budget's annealing time spent; None without a budget (the cosine
        then follows the steps)."""
        if self.deadline is None or step < self.config.warmup_iterations:
            return None
        self.annealing_started = self.annealing_started or now
        return (now - self.annealing_started) / max(self.deadline - self.annealing_started, 1e-9)

    def place(self, now: float) -> tuple[float, float | None]:
        """(seconds of the budget spent, when the annealing began): where a checkpoint written
        now leaves the clock of the run that resumes it; at the deadline, a fresh clock."""
        if self.out_of_time(now):
            return 0.0, None
        began = None if self.annealing_started is None else self.annealing_started - self.started
        return now - self.started, began

    def out_of_time(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def checkpoint_due(self, now: float) -> bool:
        """Whether a timed validation and checkpoint is due (and then the next one is set)."""
        if self.next_checkpoint is None or now < self.next_checkpoint:
            return False
        self.next_checkpoint = now + 60 * self.config.checkpoint_every_minutes
        return True

    def seconds_left(self, step: int, rate: float, now: float) -> float:
        left = (self.config.iterations - step) / max(rate, 1e-9)
        return left if self.deadline is None else min(left, max(0.0, self.deadline - now))
