"""How many threads a CPU training step uses, chosen by measuring steps/s.

On a machine whose cores are shared (the test suite, a build, an encode beside a background
training run), a step with as many threads as cores is the slowest choice: every parallel region
ends at a barrier, and a thread whose core went to the other work holds all the others until the
scheduler gives it a time slice. On 2 cores with one busy process beside it, a step of the default
recipe took 3.5x as long with 2 threads as alone, and 2x with 1 thread (the share of the machine
it had). Alone, 2 threads are 2x as fast as 1. The tuner keeps the count that measures faster:
after its first measurement and now and then it tries a neighbouring count for a few steps, and
at once when the speed drops.
"""

from dataclasses import dataclass, field


@dataclass
class ThreadTuner:
    most: int  # the largest count it may choose (and its start)
    window: int = 5  # steps per measurement, after one step to settle
    explore_every: int = 200  # steps between tries of another count while the speed holds
    drop: float = 0.7  # a window this much slower than the best since the last try: try now
    threads: int = 0
    rates: dict = field(default_factory=dict)  # threads -> steps/s of its latest window
    _trying: int | None = None  # the count being tried, against `threads`
    _since_try: int = 0
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
        if self._trying is not None:  # the try is over: keep the faster count
            if rate > self.rates.get(self.threads, 0.0):
                self.threads = self._trying
            self._trying, self._since_try, self._best_since_try = None, 0, self.rates[self.threads]
            return self._change(running)
        self._best_since_try = max(self._best_since_try, rate)
        slower = rate < self.drop * self._best_since_try
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
