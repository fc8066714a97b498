"""The memory plan of core.iedvr.Upscale (no tilesize given): whole frames where they fit, tiles
and a smaller feature cache where they do not, the same frames as the explicit tiles it chose,
clear errors when nothing fits, the estimate kept by the process's real peak memory, and an
out-of-memory error during a frame turned into smaller tiles."""

import contextlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import vapoursynth as vs

from small_network import export_small_network
from test_plugin import clip_of, planes, smooth_frames

core = vs.core
# Memory a frame takes that the plan does not measure (oneDNN's compiled kernels, the worker
# threads' buffers): an allowance, not a measurement.
UNPLANNED_MIB = 250
# Address space a 320x240 frame of the small network may still take: less than a whole window
# needs, more than tiles of half its size.
OOM_HEADROOM_MIB = 650
PLAN = re.compile(r"Upscale: (\d+)x(\d+) frames (?:whole|in tiles of (\d+)x(\d+) overlapping by "
                  r"(\d+)x(\d+)(?: \(tilesize\))?), features of (\d+) frames cached: about ([\d.]+) MiB.* of the "
                  r"([\d.]+) MiB it may use; measured (\d+) bytes per input pixel of a window, "
                  r"(\d+) per cached frame")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "small.pt"
    export_small_network(path)
    return str(path)


@contextlib.contextmanager
def logged_plan(messages: list):
    handle = core.add_log_handler(lambda kind, text: messages.append(text))
    try:
        yield
    finally:
        core.remove_log_handler(handle)


def planned_frame(clip, monkeypatch=None, budget_mb=None, **arguments):
    """Frame 2 of Upscale(clip) without tilesize, and the plan the filter logged for it."""
    if budget_mb is not None:
        monkeypatch.setenv("IEDVR_MAX_MEMORY_MB", str(budget_mb))
    messages = []
    with logged_plan(messages):
        frame = planes(core.iedvr.Upscale(clip, device_index=-1, **arguments).get_frame(2))
    plans = [PLAN.search(m) for m in messages if m.startswith("Upscale:")]
    assert len(plans) == 1 and plans[0], messages
    return frame, plans[0]


def test_small_frames_run_whole_with_the_full_cache(small_model):
    clip = clip_of(smooth_frames(height=24, width=32))
    frame, plan = planned_frame(clip, model=small_model)
    assert plan[3] is None, plan[0]                # whole frames
    assert int(plan[7]) == 7                       # 5 frames + 2, one engine
    whole = planes(core.iedvr.Upscale(clip, model=small_model, device_index=-1, tilesize=0).get_frame(2))
    np.testing.assert_array_equal(frame, whole)


def test_a_tight_budget_tiles_and_equals_the_same_explicit_tiles(small_model, monkeypatch):
    clip = clip_of(smooth_frames(height=72, width=96))
    _, free_plan = planned_frame(clip, model=small_model)
    per_pixel = int(free_plan[10])
    # Room for about a quarter of the frame's window at a time.
    budget_mb = per_pixel * 96 * 72 / 4 / 2**20 + 0.5
    frame, plan = planned_frame(clip, monkeypatch, budget_mb, model=small_model)
    assert plan[3] is not None, plan[0]
    tile_w, tile_h, overlap_x, overlap_y = (int(plan[i]) for i in (3, 4, 5, 6))
    assert tile_w * tile_h < 96 * 72 and tile_w <= 96 and tile_h <= 72
    # Balanced tiles are multiples of the network's 4 (or span the frame).
    assert all(t % 4 == 0 or t == full for t, full in ((tile_w, 96), (tile_h, 72)))
    assert float(plan[8]) <= float(plan[9]) + 0.1  # the estimate within the budget
    monkeypatch.delenv("IEDVR_MAX_MEMORY_MB")
    explicit = planes(core.iedvr.Upscale(clip, model=small_model, device_index=-1,
                                         tilesize=[tile_w, tile_h],
                                         overlap=[overlap_x, overlap_y]).get_frame(2))
    np.testing.assert_array_equal(frame, explicit)
    whole = planes(core.iedvr.Upscale(clip, model=small_model, device_index=-1, tilesize=0).get_frame(2))
    assert np.abs(frame - whole).max() < 0.01


def test_the_cache_shrinks_before_the_tiles_do(small_model, monkeypatch):
    clip = clip_of(smooth_frames(height=72, width=96))
    _, free_plan = planned_frame(clip, model=small_model)
    whole_mib, cached_frame_mib = float(free_plan[8]), int(free_plan[11]) * 96 * 72 / 2**20
    # One cached frame less than the full 7 fits, two less do: whole frames, 5 frames cached.
    _, plan = planned_frame(clip, monkeypatch, whole_mib - cached_frame_mib, model=small_model)
    assert plan[3] is None, plan[0]
    assert int(plan[7]) == 5, plan[0]


def test_impossible_budgets_are_frame_errors(small_model, monkeypatch):
    monkeypatch.setenv("IEDVR_MAX_MEMORY_MB", "lots")
    clip = clip_of(smooth_frames(height=72, width=96))
    with pytest.raises(vs.Error, match=r'IEDVR_MAX_MEMORY_MB must be a positive number of megabytes, got "lots"'):
        core.iedvr.Upscale(clip, model=small_model, device_index=-1).get_frame(2)


def test_a_budget_too_small_says_what_does_not_fit_and_what_to_set(small_model, monkeypatch):
    monkeypatch.setenv("IEDVR_MAX_MEMORY_MB", "0.01")
    clip = clip_of(smooth_frames(height=72, width=96))
    with pytest.raises(vs.Error) as refused:
        core.iedvr.Upscale(clip, model=small_model, device_index=-1).get_frame(2)
    found = re.search(r"not enough memory on cpu for 96x72 frames: they need at least ([\d.]+) MiB, "
                      r"([\d.]+) MiB of it for the 5 input frames and the x4 output frame, which are "
                      r"never tiled; this filter may use 0.0 MiB \(IEDVR_MAX_MEMORY_MB\): set "
                      r"IEDVR_MAX_MEMORY_MB=(\d+) or more", str(refused.value))
    assert found, refused.value
    least, untiled, advice = float(found[1]), float(found[2]), int(found[3])
    # What is never tiled: 5 RGBS input frames and the x4 output frame, 4 bytes a value.
    assert untiled >= (5 * 3 + 16 * 3) * 4 * 96 * 72 / 2**20 * 0.999
    assert least > untiled and advice >= least
    # The advice is enough: the smallest tiles.
    _, plan = planned_frame(clip, monkeypatch, advice, model=small_model)
    assert int(plan[3]) <= 32 and int(plan[4]) <= 32 and int(plan[7]) == 0, plan[0]


def test_given_tiles_keep_only_the_cache_the_budget_has_room_for(small_model, monkeypatch):
    # With tilesize the cache used to keep (frames + 2) whole frames' features whatever the
    # budget (18 GB at 3840x2160 with 512x512 tiles).
    clip = clip_of(smooth_frames(height=72, width=96))
    given = {"tilesize": [48, 40], "overlap": [8, 8]}
    roomy, roomy_plan = planned_frame(clip, model=small_model, **given)
    assert roomy_plan[0].startswith("Upscale: 96x72 frames in tiles of 48x40 overlapping by 8x8 "
                                    "(tilesize), features of 7 frames cached"), roomy_plan[0]
    cached_frame_mib = int(roomy_plan[11]) * 96 * 72 / 2**20
    tight_mib = float(roomy_plan[8]) - 1.5 * cached_frame_mib  # room for 5 frames, not 7
    tight, tight_plan = planned_frame(clip, monkeypatch, tight_mib, model=small_model, **given)
    assert (int(tight_plan[3]), int(tight_plan[4]), int(tight_plan[7])) == (48, 40, 5), tight_plan[0]
    starved, starved_plan = planned_frame(clip, monkeypatch, 0.01, model=small_model, **given)
    assert int(starved_plan[7]) == 0, starved_plan[0]  # the given tiles still run
    for frame in (tight, starved):
        np.testing.assert_array_equal(frame, roomy)


def test_tilesize_0_with_overlap_is_refused(small_model):
    with pytest.raises(vs.Error, match="overlap needs tiles; tilesize=0 means whole frames"):
        core.iedvr.Upscale(clip_of(smooth_frames()), model=small_model, tilesize=0, overlap=4)


def run_child(body: str, width: int, height: int, budget_mb=None, **values):
    """Runs `body` in a fresh process (memory is measured per process, and an address-space limit
    must not reach the test runner) with `clip`, a smooth width x height RGBS clip, `messages`,
    VapourSynth's log, and `rss(field)`, a field of /proc/self/status in bytes."""
    script = textwrap.dedent("""
        import resource, sys
        import numpy as np
        import vapoursynth as vs
        core = vs.core
        messages = []
        core.add_log_handler(lambda kind, text: messages.append(text))
        def rss(field):
            return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
        def planes(frame):
            return np.stack([np.asarray(frame[p]) for p in range(3)])
        width, height = {width}, {height}
        blank = core.std.BlankClip(width=width, height=height, format=vs.RGBS, length=5)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        def fill(n, f):
            f = f.copy()
            for plane in range(3):
                np.asarray(f[plane])[:] = 0.5 + 0.4 * np.sin(x * 0.07 * (plane + 1) + y * 0.05 + n)
            return f
        clip = core.std.ModifyFrame(blank, blank, fill)
    """) + textwrap.dedent(body)
    env = dict(os.environ)
    env.pop("IEDVR_MAX_MEMORY_MB", None)
    if budget_mb is not None:
        env["IEDVR_MAX_MEMORY_MB"] = str(budget_mb)
    # -P: the repository root must not shadow the installed package.
    return subprocess.run([sys.executable, "-P", "-c", script.format(width=width, height=height, **{
        k: repr(v) for k, v in values.items()})], capture_output=True, text=True, timeout=600, env=env)


def test_the_process_stays_within_the_plan():
    # The shipped network at 160x120 takes about 0.9 GiB in whole frames; given 300 MiB, what a
    # frame adds to the process (the plan's measurement included) stays within that, plus what
    # the plan does not count: oneDNN's compiled kernels and the threads' own buffers.
    result = run_child("""
        up = core.iedvr.Upscale(clip, device_index=-1, fp16=0)  # loads libtorch and the model
        before = rss("VmRSS")
        up.get_frame(2)
        print("PLAN", [m for m in messages if m.startswith("Upscale:")][0])
        print("GROWTH", rss("VmHWM") - before)
    """, 160, 120, budget_mb=300)
    assert result.returncode == 0, result.stderr
    plan = PLAN.search(result.stdout)
    assert plan and plan[3] is not None, result.stdout
    growth = int(result.stdout.split("GROWTH")[1])
    assert growth < (300 + UNPLANNED_MIB) * 2**20, (growth / 2**20, plan[0])


def test_out_of_memory_during_a_frame_retries_with_smaller_tiles(small_model):
    # An address-space limit makes the allocations of a whole 320x240 window fail (as a GPU runs
    # out of memory), while tiles half the size fit: the frame comes back, equal to those tiles,
    # and the next frame uses them straight away.
    result = run_child("""
        up = core.iedvr.Upscale(clip, model={model}, device_index=-1, tilesize=0, fp16=0)
        reference = core.iedvr.Upscale(clip, model={model}, device_index=-1, fp16=0, tilesize=[160, 120],
                                       overlap=[8, 8])
        expected = [planes(reference.get_frame(n)) for n in (2, 3)]
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        vm = rss("VmSize")
        resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom} * 2**20, hard))
        got = [planes(up.get_frame(n)) for n in (2, 3)]
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        print("EQUAL", all(np.array_equal(a, b) for a, b in zip(got, expected)))
    """, 320, 240, model=small_model, headroom=OOM_HEADROOM_MIB)
    assert result.returncode == 0, result.stderr
    assert "EQUAL True" in result.stdout, result.stdout
