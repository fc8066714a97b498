"""training/threads.py: the thread count follows the faster measured speed, alone and beside
other work (a simulated clock: each step takes 1 / rate(threads) seconds)."""

import pytest

from vs_iedvr.training.threads import ThreadTuner

ALONE = {1: 0.37, 2: 0.73}  # steps/s of the default recipe on 2 cores (Xeon with AMX)
BESIDE_ONE_BUSY_PROCESS = {1: 0.38, 2: 0.21}


def run(tuner: ThreadTuner, phases: list[tuple[int, dict]]) -> list[list[int]]:
    """The count of every step, phase by phase."""
    now, counts = 0.0, []
    for steps, rate in phases:
        counts.append([])
        for _ in range(steps):
            counts[-1].append(tuner.current)
            now += 1 / rate[tuner.current]
            tuner.step_done(now)
    return counts


def test_alone_it_keeps_every_core_but_now_and_then_tries_one_fewer():
    counts = run(ThreadTuner(2), [(1000, ALONE)])[0]
    assert counts[0] == 2
    assert counts.count(1) <= 0.05 * len(counts)  # the tries: 6 steps in 200
    assert counts.count(1) > 0
    assert counts[-1] == 2


def test_beside_other_work_it_drops_a_thread_and_takes_it_back_after():
    alone, beside, after = run(ThreadTuner(2), [(300, ALONE), (600, BESIDE_ONE_BUSY_PROCESS),
                                                (600, ALONE)])
    # The slowdown is seen within two windows and the try of one thread wins.
    assert beside[15:].count(1) > 0.9 * len(beside[15:])
    # Once the cores are free again, the next periodic try finds 2 threads faster.
    assert after[-300:].count(2) > 0.9 * 300


def test_a_run_started_beside_other_work_finds_one_thread_at_once():
    counts = run(ThreadTuner(2), [(400, BESIDE_ONE_BUSY_PROCESS)])[0]
    assert counts[15:].count(1) > 0.9 * len(counts[15:])


def test_one_core_never_changes():
    assert set(run(ThreadTuner(1), [(300, ALONE)])[0]) == {1}
    with pytest.raises(ValueError, match="most must be at least 1"):
        ThreadTuner(0)
