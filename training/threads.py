"""How many threads a CPU training step uses, chosen by measuring steps/s.

On a machine whose cores are shared (the test suite, a build, an encode beside a background
training run), a step with as many threads as cores is the slowest choice: every parallel region
ends at a barrier, and a thread whose core went to the other work holds all the others until the
scheduler gives it a time slice. On 2 cores with one busy process beside it, a step of the default
recipe took 3.5x as long with 2 threads as alone, and 2x with 1 thread (the share of the machine
it had). Alone, 2 threads are 2x as fast as 1. The tuner keeps the count that measures faster:
after its first measurement and now and then it tries a neighbouring count for a few steps, at
once when the speed drops, and, below its largest count, as soon as the machine has a core idle
(the other work ended: with large patches a step takes seconds, and waiting for the periodic try
left a run on one thread for about 19 minutes with 60x60 patches).
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ThreadTuner:
    most: int  # the largest count it may choose (and its start)
    window: int = 5  # steps per measurement, after one step to settle
    explore_every: int = 200  # steps between tries of another count while the speed holds
    drop: float = 0.7  # a window this much slower than the best since the last try: try now
    # Idle cores of the machine since the last call (None where unknown), checked after each
    # window: more than `free_core` of one while below `most` threads tries one more at once.
    idle_cores: Callable[[], float | None] | None = None
    free_core: float = 0.6
    retry_free_core_s: float = 120.0  # after a try that lost, wait this long before the next
    threads: int = 0
    rates: dict = field(default_factory=dict)  # threads -> steps/s of its latest window
    _trying: int | None = None  # the count being tried, against `threads`
    _since_try: int = 0
    _last_try: float = float("-inf")  # the clock at the end of the last try
    _best_since_try: float = 0.0
    _steps: int = -1  # steps in the current window, -1 while settling
    _started: float = 0.0

    def __post_init__(self):
        if self.most < 1:
            raise ValueError(f"most must be at least 1, got {self.most}")
        self.threads = self.threads or self.most
        # The first window is followed by a try: a run started beside other work sees no drop.
        self._since_try = self.explore_every

    @property
    def current(self) -> int:
        """The count the next steps should run with."""
        return self._trying or self.threads

    def step_done(self, now: float) -> int | None:
        """Call after every step with the clock; returns a new count to set, or None."""
        self._since_try += 1
        if self._steps < 0:  # the settling step after a change
            self._steps, self._started = 0, now
            return None
        self._steps += 1
        if self._steps < self.window:
            return None
        rate = self._steps / max(now - self._started, 1e-9)
        self._steps, self._started = 0, now
        running = self.current
        self.rates[running] = rate
        idle = self.idle_cores() if self.idle_cores is not None else None  # over this window
        if self._trying is not None:  # the try is over: keep the faster count
            if rate > self.rates.get(self.threads, 0.0):
                self.threads = self._trying
            self._trying, self._since_try, self._best_since_try = None, 0, self.rates[self.threads]
            self._last_try = now
            return self._change(running)
        self._best_since_try = max(self._best_since_try, rate)
        slower = rate < self.drop * self._best_since_try
        free_core = (idle is not None and idle > self.free_core and self.threads < self.most
                     and now - self._last_try >= self.retry_free_core_s)
        if free_core:
            self._trying = self.threads + 1
            return self._change(running)
        if self.most > 1 and (slower or self._since_try >= self.explore_every):
            # Fewer threads when the speed dropped (something else took a core); otherwise the
            # other way round as it can go.
            if slower:
                candidate = self.threads - 1 if self.threads > 1 else self.threads + 1
            else:
                candidate = self.threads + 1 if self.threads < self.most else self.threads - 1
            self._trying = candidate
            return self._change(running)
        return None

    def _change(self, running: int) -> int | None:
        if self.current == running:
            return None
        self._steps = -1
        return self.current


def machine_idle_cores() -> Callable[[], float | None]:
    """A function that returns how many of the cores this process may run on were idle on average
    since its previous call (the first call: since boot), from Linux's /proc/stat; None where that
    cannot be read."""
    previous = [0, 0]  # idle and total jiffies of those cores
    try:
        allowed = {f"cpu{core}" for core in os.sched_getaffinity(0)}
    except AttributeError:  # no affinity on this platform: /proc/stat is not there either
        allowed = set()

    def idle_cores() -> float | None:
        try:
            with open("/proc/stat") as stat:
                # cpuN user nice system idle iowait irq softirq steal ...
                cores = [[int(value) for value in line.split()[1:9]] for line in stat
                         if line.split(maxsplit=1)[0] in allowed]
        except (OSError, ValueError):
            return None
        idle = sum(jiffies[3] + jiffies[4] for jiffies in cores)
        total = sum(sum(jiffies) for jiffies in cores)
        spent, rested = total - previous[1], idle - previous[0]
        previous[:] = [idle, total]
        return len(cores) * rested / spent if cores and spent > 0 else None

    return idle_cores
