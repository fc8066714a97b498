"""The encoder's toolchain end to end, as the README runs it: a script that reads a clip with
BestSource (core.bs) and upscales it, `vspipe -c y4m script.vpy - | ffmpeg -i - -c:v libx265 ...`
in a shell (ffmpeg from imageio-ffmpeg, which has libx265), and the HEVC file decoded again and
compared frame by frame with the script's frames computed in this process. Also: a failing script
makes the pipe fail visibly, and the README's script runs as printed."""

import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import vapoursynth as vs

REPO = Path(__file__).resolve().parent.parent
VSPIPE = Path(sys.executable).with_name("vspipe")
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
DOG = REPO / "demo" / "dog.mkv"

# 6 frames of the demo clip at 64x36 through the shipped weights: about a second a frame here.
# Every third frame: consecutive ones then differ clearly (the camera moves slowly).
TINY_SCRIPT = f"""
import vapoursynth as vs
core = vs.core
clip = core.bs.VideoSource({str(DOG)!r}, cachemode=0)
clip = core.resize.Bicubic(clip, 64, 36, format=vs.RGBS)[::3]
clip = core.iedvr.Upscale(clip)
clip = core.resize.Bicubic(clip, format=vs.YUV420P10, matrix_s="709")
clip.set_output()
"""
WIDTH, HEIGHT, FRAMES = 256, 144, 6


def shell_pipe(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs `command` in bash with pipefail, so that the pipe fails when vspipe fails, as a user's
    careful shell script would."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def pipe_into_x265(script: Path, out: Path, x265_args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`vspipe -c y4m script - | ffmpeg -i - -c:v libx265 X265_ARGS out`, as the README runs it."""
    return shell_pipe(f"{shlex.quote(str(VSPIPE))} -c y4m {shlex.quote(str(script))} - | "
                      f"{shlex.quote(FFMPEG)} -hide_banner -loglevel error -i - -c:v libx265 "
                      f"{x265_args} {shlex.quote(str(out))}", cwd)


def script_frames(script: Path) -> list[list[np.ndarray]]:
    """The Y, U and V planes of every frame of the script's output, computed in this process."""
    runpy.run_path(str(script))
    try:
        clip = vs.get_output(0).clip
        return [[np.asarray(frame[p]).copy() for p in range(3)] for frame in clip.frames()]
    finally:
        vs.clear_output(0)


def stream_info(video: Path) -> str:
    """ffmpeg's description of the video stream, e.g. `hevc (Main 10), yuv420p10le(tv, bt709), 256x144`."""
    result = subprocess.run([FFMPEG, "-hide_banner", "-i", str(video)], capture_output=True, text=True)
    streams = re.findall(r"Stream #0:0.*?: Video: (.*)", result.stderr)
    assert streams, result.stderr
    return streams[0]


def decoded_frames(video: Path, width: int, height: int) -> list[list[np.ndarray]]:
    """The video decoded by ffmpeg into 10-bit 4:2:0 planes."""
    raw = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(video),
                          "-f", "rawvideo", "-pix_fmt", "yuv420p10le", "-"],
                         capture_output=True, check=True).stdout
    sizes = [(height, width), (height // 2, width // 2), (height // 2, width // 2)]
    frame_bytes = 2 * sum(h * w for h, w in sizes)
    assert len(raw) % frame_bytes == 0, f"{len(raw)} bytes is no whole number of {width}x{height} frames"
    frames = []
    for start in range(0, len(raw), frame_bytes):
        planes, offset = [], start
        for h, w in sizes:
            planes.append(np.frombuffer(raw, np.uint16, h * w, offset).reshape(h, w))
            offset += 2 * h * w
        frames.append(planes)
    return frames


def psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """PSNR over all three 10-bit planes."""
    squared = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a, b))
    mse = squared / sum(x.size for x in a)
    return float("inf") if mse == 0 else 10 * np.log10(1023 ** 2 / mse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny script and its frames computed in this process."""
    folder = tmp_path_factory.mktemp("pipe")
    script = folder / "tiny.vpy"
    script.write_text(TINY_SCRIPT)
    expected = script_frames(script)
    assert len(expected) == FRAMES and expected[0][0].shape == (HEIGHT, WIDTH)
    # Consecutive frames differ, so comparing by index checks the order too.
    assert all(psnr(expected[n], expected[n + 1]) < 42 for n in range(FRAMES - 1))
    return script, expected


def test_lossless_hevc_holds_the_filters_frames_exactly(tiny, tmp_path):
    script, expected = tiny
    out = tmp_path / "lossless.mkv"
    result = pipe_into_x265(script, out, "-x265-params lossless=1:log-level=error", tmp_path)
    assert result.returncode == 0, result.stderr
    info = stream_info(out)
    assert info.startswith("hevc") and "yuv420p10le" in info and f"{WIDTH}x{HEIGHT}" in info, info
    decoded = decoded_frames(out, WIDTH, HEIGHT)
    assert len(decoded) == FRAMES
    for n, (got, want) in enumerate(zip(decoded, expected)):
        for plane, (g, w) in enumerate(zip(got, want)):
            assert np.array_equal(g, w), f"frame {n} plane {plane}: max difference {np.abs(g.astype(int) - w).max()}"


def test_crf_18_hevc_is_close_to_the_filters_frames(tiny, tmp_path):
    script, expected = tiny
    out = tmp_path / "out.mkv"
    result = pipe_into_x265(script, out, "-crf 18 -x265-params log-level=error", tmp_path)
    assert result.returncode == 0, result.stderr
    decoded = decoded_frames(out, WIDTH, HEIGHT)
    assert len(decoded) == FRAMES
    scores = [psnr(got, want) for got, want in zip(decoded, expected)]
    # CRF 18 measured 49 to 53 dB on these frames; neighbouring frames are 38 to 41 dB apart.
    assert min(scores) > 45, scores
    for n in range(FRAMES - 1):
        assert scores[n] > psnr(decoded[n], expected[n + 1]) + 5


FAILING_SCRIPTS = {
    "raises": ("import vapoursynth as vs\nraise RuntimeError('deliberate failure in the script')\n",
               "deliberate failure in the script"),
    # The filter's own error for an integer clip, raised while the script is evaluated.
    "filter error": ("import vapoursynth as vs\n"
                     "vs.core.iedvr.Upscale(vs.core.std.BlankClip(format=vs.RGB24)).set_output()\n",
                     "clip must be RGBS or RGBH"),
}


@pytest.mark.parametrize("name", FAILING_SCRIPTS)
def test_a_failing_script_fails_the_pipe_visibly(name, tmp_path):
    text, message = FAILING_SCRIPTS[name]
    script = tmp_path / "bad.vpy"
    script.write_text(text)
    alone = subprocess.run([str(VSPIPE), "-c", "y4m", str(script), "-"], capture_output=True, timeout=120)
    assert alone.returncode != 0
    assert alone.stdout == b""
    assert message in alone.stderr.decode()

    out = tmp_path / "out.mkv"
    piped = pipe_into_x265(script, out, "", tmp_path)
    assert piped.returncode != 0
    assert message in piped.stderr
    assert not out.exists() or out.stat().st_size == 0


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_the_readmes_script_and_pipe_run_as_printed(tmp_path, monkeypatch):
    """The README's script, unchanged, on a short YUV clip called in.mkv, through the README's pipe
    command with ffmpeg and the venv's bin folder put in for `ffmpeg` and `.venv/bin/`."""
    section = readme_section("Use")
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'core.bs.VideoSource("in.mkv")' in script
    (tmp_path / "script.vpy").write_text(script)
    pipe = re.search(r"^(\.venv/bin/vspipe -c y4m script\.vpy - \| ffmpeg .*)$", section, re.M).group(1)
    assert "libx265" in pipe
    # A YUV 4:2:0 file without colour tags, as most are, 3 frames at 128x72.
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(DOG), "-frames:v", "3",
                    "-vf", "scale=128:72", "-c:v", "ffv1", "-pix_fmt", "yuv420p",
                    str(tmp_path / "in.mkv")], check=True)

    command = pipe.replace(".venv/bin/vspipe", shlex.quote(str(VSPIPE)), 1)
    command = command.replace("| ffmpeg ", f"| {shlex.quote(FFMPEG)} -hide_banner -loglevel error ", 1)
    result = shell_pipe(command, tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / re.search(r"(\S+\.mkv)$", pipe).group(1)
    info = stream_info(out)
    assert info.startswith("hevc") and "512x288" in info, info
    assert "(tv, bt709, progressive)" in info, info  # the command's colour tags reached the file

    monkeypatch.chdir(tmp_path)  # vspipe runs a script in its folder: in.mkv is relative
    expected = script_frames(tmp_path / "script.vpy")
    decoded = decoded_frames(out, 512, 288)
    assert len(decoded) == len(expected) == 3
    assert min(psnr(got, want) for got, want in zip(decoded, expected)) > 40

