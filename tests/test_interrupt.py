"""An interrupted encode stops and says so (issue 35): the vspipe command that
docs/scaling-out.md gives (its `VSPIPE=` line, run as written there) ends at once on SIGTERM and on
SIGINT, with a non-zero status, and leaves no vspipe computing behind. The environment's
bin/vspipe, VapourSynth's Python wrapper that the README used to run, failed both: SIGTERM left the
real vspipe running, orphaned, and SIGINT gave status 0. IEDVR_TEST_VSPIPE=PATH runs the same
checks on another vspipe (the wrapper fails them)."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FRAMES = 200


def documented_vspipe() -> str:
    """The real vspipe's path, by the `VSPIPE=$(...)` line of docs/scaling-out.md, with this
    environment's Python in place of .venv/bin/python."""
    if os.environ.get("IEDVR_TEST_VSPIPE"):
        return os.environ["IEDVR_TEST_VSPIPE"]
    text = (REPO / "docs" / "scaling-out.md").read_text()
    line = re.search(r"^VSPIPE=\$\((.*)\)$", text, re.M).group(1)
    command = line.replace(".venv/bin/python", sys.executable, 1)
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


@pytest.fixture
def slow_script(tmp_path):
    """A script of FRAMES small frames at about 20 per second, named uniquely, so that any process
    still running it is found by its command line."""
    script = tmp_path / f"slow-{os.getpid()}-{time.monotonic_ns()}.vpy"
    script.write_text(textwrap.dedent(f"""
        import time
        import vapoursynth as vs
        core = vs.core
        clip = core.std.BlankClip(width=64, height=64, format=vs.YUV420P8, length={FRAMES})
        def slowly(n, f):
            time.sleep(0.05)
            return f
        core.std.ModifyFrame(clip, clip, slowly).set_output()
    """))
    return script


def processes_running(script: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(script).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return found


def start(script: Path, output: Path) -> subprocess.Popen:
    # A session of its own, as a terminal's job or a scheduler's task is.
    process = subprocess.Popen([documented_vspipe(), "-c", "y4m", str(script), str(output)],
                               start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (output.exists() and output.stat().st_size > 0):  # frames are flowing
        assert process.poll() is None and time.monotonic() < deadline, "vspipe did not start"
        time.sleep(0.1)
    return process


def test_sigterm_stops_the_encode_and_leaves_nothing_running(slow_script, tmp_path):
    process = start(slow_script, tmp_path / "out.y4m")
    try:
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)
        time.sleep(0.5)
        left = processes_running(slow_script)
        assert status != 0
        assert not left, f"still running the script after SIGTERM: {left}"
    finally:
        for pid in processes_running(slow_script):  # only what this test started
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("to_group", [False, True], ids=["to-the-process", "ctrl-c-to-the-group"])
def test_sigint_stops_the_encode_with_a_non_zero_status(slow_script, tmp_path, to_group):
    output = tmp_path / "out.y4m"
    process = start(slow_script, output)
    try:
        if to_group:
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        status = process.wait(timeout=30)
        frames = output.read_bytes().count(b"FRAME")
        assert status != 0, f"status 0 after {frames} of {FRAMES} frames"
        assert frames < FRAMES
    finally:
        for pid in processes_running(slow_script):
            os.kill(pid, signal.SIGKILL)
