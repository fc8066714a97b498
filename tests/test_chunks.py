"""Scaling out (docs/scaling-out.md): a clip encoded in chunks, each chunk its own
`vspipe -s START -e END` process as av1an or a cluster's job array runs it, gives exactly the
frames of one run over the whole clip, byte for byte; and the multi-GPU recipe (one Upscale per
device on the full clip, each keeping every other output frame, joined with std.Interleave) gives
exactly the frames of one Upscale. Here on the CPU (device_index=-1 for both instances), in the
plugin's default precision (bfloat16 on CPUs that compute it natively, else float32);
`IEDVR_TEST_FP16=0` (or 1) runs the same checks with that `fp16`.

A chunk A..B upscales frames A..B from windows that reach frames A-2..B+2 of the full clip, so
its first and last two frames depend on frames outside the chunk: every chunk boundary is in the
middle of the clip, one chunk is a single frame, and the clip's length is odd (the Interleave
recipe must neither drop nor add a frame).

Each vspipe process costs several seconds before its first frame (libtorch, the model, the memory
plan), so the whole run and the Interleave recipe are one process: its output is the whole clip
upscaled by one instance, then the same clip from the recipe's two other instances."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

VSPIPE = Path(sys.executable).with_name("vspipe")
WIDTH, HEIGHT, LENGTH, SCALE = 64, 48, 13, 4
FRAME_BYTES = 3 * (SCALE * WIDTH) * (SCALE * HEIGHT) * 4  # RGBS, raw planes
# Inclusive ranges, as `vspipe -s START -e END`: together they cover the clip once.
CHUNKS = [(0, 4), (5, 5), (6, 12)]

# A deterministic moving picture: smooth colour waves drifting by 2 pixels a frame and a bright
# square crossing the frame, so that neighbouring frames differ and the alignment has work to do.
# `mode` and `fp16` come from `vspipe -a`.
SCRIPT = textwrap.dedent(f"""
    import numpy as np
    import vapoursynth as vs
    core = vs.core

    def picture(n, f):
        out = f.copy()
        y, x = np.mgrid[0:{HEIGHT}, 0:{WIDTH}].astype(np.float32)
        for c in range(3):
            wave = 0.5 + 0.35 * np.sin(0.21 * (x - 2 * n) + 0.13 * (c + 1) * y + 1.7 * c)
            square = (abs(x - 6 - 4 * n) < 5) & (abs(y - 10 - 2 * n) < 5)
            np.asarray(out[c])[:] = np.where(square, 0.95 - 0.2 * c, wave).astype(np.float32)
        return out

    blank = core.std.BlankClip(format=vs.RGBS, width={WIDTH}, height={HEIGHT}, length={LENGTH},
                               fpsnum=24000, fpsden=1001)
    clip = core.std.ModifyFrame(blank, blank, picture)

    fp16 = globals().get("fp16", "default")
    args = {{}} if fp16 == "default" else {{"fp16": int(fp16)}}
    out = core.iedvr.Upscale(clip, device_index=-1, **args)
    assert (out.width, out.height) == ({SCALE * WIDTH}, {SCALE * HEIGHT})
    if globals().get("mode") == "with-interleave":
        # The multi-GPU recipe: on a machine with 2 GPUs, device_index=i for instance i.
        gpus = 2
        parts = [core.std.SelectEvery(core.iedvr.Upscale(clip, device_index=-1, **args), gpus, i)
                 for i in range(gpus)]
        interleaved = core.std.Interleave(parts, extend=True)[:clip.num_frames]
        assert interleaved.num_frames == clip.num_frames and interleaved.fps == clip.fps
        out = out + interleaved
    out.set_output()
""")

FP16 = os.environ.get("IEDVR_TEST_FP16", "default")  # "default", "0" or "1"


# Threads that wait sleep instead of spinning: on a machine whose cores other processes keep busy,
# spinning made Upscale's start-up (the model's freezing, many small parallel loops) take a minute
# instead of seconds. The frames do not depend on it.
ENV = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


def vspipe(script: Path, *options: str) -> bytes:
    result = subprocess.run([str(VSPIPE), *options, str(script), "-"], capture_output=True,
                            timeout=300, env=ENV)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chunks") / "moving.vpy"
    path.write_text(SCRIPT)
    return path


@pytest.fixture(scope="module")
def reference(script):
    """The raw frames of one Upscale over the whole clip, and of the Interleave recipe."""
    raw = vspipe(script, "-a", f"fp16={FP16}", "-a", "mode=with-interleave")
    assert len(raw) == 2 * LENGTH * FRAME_BYTES
    frames = [raw[n * FRAME_BYTES:(n + 1) * FRAME_BYTES] for n in range(2 * LENGTH)]
    whole, interleaved = frames[:LENGTH], frames[LENGTH:]
    # A meaningful picture: finite, and every frame differs from the next (so the frames' order
    # is checked too).
    values = np.frombuffer(raw, np.float32)
    assert np.isfinite(values).all() and values.std() > 0.05
    assert all(whole[n] != whole[n + 1] for n in range(LENGTH - 1))
    return whole, interleaved


def first_difference(got: bytes, want: bytes, first_frame: int) -> str:
    """Where two runs of frames from `first_frame` on differ, for the failure message."""
    a = np.frombuffer(got, np.float32).reshape(-1, 3, SCALE * HEIGHT, SCALE * WIDTH)
    b = np.frombuffer(want, np.float32).reshape(-1, 3, SCALE * HEIGHT, SCALE * WIDTH)
    differing = [first_frame + k for k in range(len(a)) if not np.array_equal(a[k], b[k])]
    return (f"frames {differing} differ, by up to {np.abs(a - b).max():.3g} "
            f"(of {np.abs(b).max():.3g})")


def test_chunks_equal_the_whole_run_byte_for_byte(script, reference):
    whole, _ = reference
    covered = []
    for start, end in CHUNKS:
        got = vspipe(script, "-a", f"fp16={FP16}", "-s", str(start), "-e", str(end))
        want = b"".join(whole[start:end + 1])
        assert len(got) == len(want), f"chunk {start}-{end}: {len(got)} bytes, expected {len(want)}"
        assert got == want, f"chunk {start}-{end}: " + first_difference(got, want, start)
        covered += range(start, end + 1)
    assert covered == list(range(LENGTH))


def test_interleaved_instances_equal_one_upscale_byte_for_byte(reference):
    whole, interleaved = reference
    got, want = b"".join(interleaved), b"".join(whole)
    assert got == want, first_difference(got, want, 0)
