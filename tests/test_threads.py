"""training/threads.py: the thread count follows the faster measured speed, alone and beside
other work (a simulated clock: each step takes 1 / rate(threads) seconds)."""

import pytest

from vs_iedvr.training.threads import ThreadTuner

ALONE = {1: 0.37, 2: 0.73}  # steps/s of the default recipe on 2 cores (Xeon with AMX)
BESIDE_ONE_BUSY_PROCESS = {1: 0.38, 2: 0.21}


def run(tuner: ThreadTuner, phases: list[tuple[int, dict]]) -> list[list[int]]:
    """The count of every step, phase by phase. Where the tuner reads the machine's idle cores,
    2 cores: a phase whose 1-thread rate is below 0.6 of its 2-thread one is alone (the threads'
    own cores busy, the others idle), any other has one busy process beside it."""
    now, counts, phase = 0.0, [], None
    if tuner.idle_cores is not None:
        tuner.idle_cores = lambda: max(0.0, 2 - tuner.current - (0 if alone(phase) else 1))
    for steps, rate in phases:
        counts.append([])
        phase = rate
        for _ in range(steps):
            counts[-1].append(tuner.current)
            now += 1 / rate[tuner.current]
            tuner.step_done(now)
    return counts


def alone(rate: dict) -> bool:
    return rate[1] < 0.6 * rate[2]


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


def test_with_slow_steps_it_takes_its_thread_back_once_a_core_is_idle():
    """Large patches: a step takes seconds, and the periodic try (every 200 steps) would leave a
    run on one thread for most of an hour after the other work ended; the idle core is seen
    after the next window (and at most the wait after the last try)."""
    slow_alone = {threads: rate / 5 for threads, rate in ALONE.items()}
    slow_beside = {threads: rate / 5 for threads, rate in BESIDE_ONE_BUSY_PROCESS.items()}
    tuner = ThreadTuner(2, idle_cores=lambda: None)
    beside, after = run(tuner, [(230, slow_beside), (400, slow_alone)])
    assert beside[-100:].count(1) > 90  # beside other work no core is idle: no extra tries
    seconds_on_one_thread = sum(1 / slow_alone[1] for count in after if count == 1)
    assert 0 < seconds_on_one_thread < tuner.retry_free_core_s + 2 * 6 / slow_alone[1]
    assert after[-300:].count(2) > 0.95 * 300


def test_a_run_started_beside_other_work_finds_one_thread_at_once():
    counts = run(ThreadTuner(2), [(400, BESIDE_ONE_BUSY_PROCESS)])[0]
    assert counts[15:].count(1) > 0.9 * len(counts[15:])


def test_one_core_never_changes():
    assert set(run(ThreadTuner(1), [(300, ALONE)])[0]) == {1}
    with pytest.raises(ValueError, match="most must be at least 1"):
        ThreadTuner(0)
