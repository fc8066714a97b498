"""VMAF of upscaled frames against the ground truth, through ffmpeg's libvmaf filter with its
default model (vmaf_v0.6.1), as encoders score a picture.

The frames reach ffmpeg losslessly: the 8-bit RGB frames that PSNR and SSIM see, as raw video in
two temporary files. ffmpeg converts both to 8-bit YUV 4:4:4 with the BT.601 matrix in limited
range (PSNR-Y's luma, rounded to 8 bits; VMAF's features are computed on luma only), libvmaf scores
the clip as a sequence (its motion feature compares each frame with the one before) and writes a
JSON log with a score per frame, which is what this module returns.

The ffmpeg is imageio-ffmpeg's static build (installed with the `test` and `demo` extras; it has
libvmaf), or the one IMAGEIO_FFMPEG_EXE names, or `ffmpeg` on the PATH.
"""

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

# Distorted first, reference second: libvmaf's "main" and "reference" inputs.
FILTER_GRAPH = ("[0:v]{convert}[distorted];[1:v]{convert}[reference];"
                "[distorted][reference]libvmaf=log_fmt=json:log_path=vmaf.json:n_threads={threads}")
TO_YUV = ("scale=out_color_matrix=bt601:out_range=tv:flags=accurate_rnd+full_chroma_int,"
          "format=yuv444p")


class VmafUnavailableError(ValueError):
    """No ffmpeg with libvmaf: the message says how to get one."""


def ffmpeg_executable() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        found = shutil.which("ffmpeg")
        if found is None:
            raise VmafUnavailableError(
                "--metrics vmaf needs ffmpeg with libvmaf: pip install imageio-ffmpeg (its static "
                "ffmpeg has it), or put such an ffmpeg on the PATH") from None
        return found
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as error:  # it found no ffmpeg at all
        raise VmafUnavailableError(f"--metrics vmaf needs ffmpeg with libvmaf: {error}") from None


@functools.cache
def check_libvmaf(ffmpeg: str) -> None:
    """Raises VmafUnavailableError unless `ffmpeg -filters` lists libvmaf."""
    try:
        listing = subprocess.run([ffmpeg, "-hide_banner", "-filters"], capture_output=True,
                                 text=True, timeout=60).stdout
    except OSError as error:
        raise VmafUnavailableError(f"--metrics vmaf: cannot run {ffmpeg}: {error}") from None
    if not any(line.split()[1:2] == ["libvmaf"] for line in listing.splitlines()):
        raise VmafUnavailableError(
            f"--metrics vmaf: {ffmpeg} has no libvmaf filter (not in `ffmpeg -filters`); install "
            "imageio-ffmpeg, whose static ffmpeg has it, or set IMAGEIO_FFMPEG_EXE to an ffmpeg "
            "built with --enable-libvmaf")


def raw_rgb24(frames: torch.Tensor) -> bytes:
    """[N, 3, H, W] frames in [0, 1] that are already 8-bit values (as `quantise` makes them) as
    packed RGB bytes, frame after frame."""
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy().tobytes()


def vmaf(distorted: torch.Tensor, reference: torch.Tensor, threads: int = 0) -> list[float]:
    """VMAF of each frame of `distorted` against the same frame of `reference`, both one clip's
    [N, 3, H, W] RGB frames in [0, 1] on 8-bit values, in order. threads: libvmaf's (0: one per
    core this process may use)."""
    if distorted.shape != reference.shape or distorted.dim() != 4 or distorted.shape[1] != 3:
        raise ValueError(f"vmaf needs two clips of the same [N, 3, H, W] shape, got "
                         f"{tuple(distorted.shape)} and {tuple(reference.shape)}")
    count, _, height, width = distorted.shape
    ffmpeg = ffmpeg_executable()
    check_libvmaf(ffmpeg)
    threads = threads or len(os.sched_getaffinity(0))
    raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", f"{width}x{height}",
           "-framerate", "24"]
    with tempfile.TemporaryDirectory(prefix="iedvr-vmaf-") as folder:
        folder = Path(folder)
        (folder / "distorted.rgb").write_bytes(raw_rgb24(distorted))
        (folder / "reference.rgb").write_bytes(raw_rgb24(reference))
        # Run inside the folder: the log's name in the filter graph then needs no escaping.
        command = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
                   *raw, "-i", "distorted.rgb", *raw, "-i", "reference.rgb",
                   "-lavfi", FILTER_GRAPH.format(convert=TO_YUV, threads=threads),
                   "-f", "null", "-"]
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg's libvmaf failed (exit {result.returncode}): "
                               f"{result.stderr.strip()[-2000:]}")
        log = json.loads((folder / "vmaf.json").read_text())
    frames = sorted(log["frames"], key=lambda frame: frame["frameNum"])
    scores = [frame["metrics"]["vmaf"] for frame in frames]
    if len(scores) != count:
        raise RuntimeError(f"libvmaf scored {len(scores)} frames of {count}")
    return scores
