"""The demo: upscales demo/dog.mkv (256x144, 16 frames of a real phone video) x4 with vs-iedvr
through vspipe, encodes the result to OUT/dog-x4.mp4 (H.264) while it streams, and writes
OUT/side-by-side.png: frame 8 with plain bicubic x4 on the left and vs-iedvr on the right.

    .venv/bin/python demo/run_demo.py [--model MODEL.pt] [--out demo-output]

--model: a model file instead of the default weights. Progress goes to stderr, the summary to stdout.
"""

import argparse
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEMO = Path(__file__).resolve().parent
VSPIPE = Path(sys.executable).parent / "vspipe"
FRAME = 8
CROP = (192, 40, 832, 520)  # 640x480 of the 1024x576 output around the dog's face and paws
BT709 = 1  # AVCOL_SPC_BT709, AVCOL_PRI_BT709 and AVCOL_TRC_BT709 alike
LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG, what resize writes for YUV by default


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def vspipe(*options: str) -> subprocess.Popen:
    """vspipe running demo/upscale.vpy with the vspipe `options`, y4m on its stdout."""
    return subprocess.Popen([str(VSPIPE), "-c", "y4m", *options, str(DEMO / "upscale.vpy"), "-"],
                            stdout=subprocess.PIPE)


def read_header(pipe) -> tuple[int, int, Fraction]:
    """Width, height and frame rate from a y4m header; the script writes YUV 4:4:4, 8 bits."""
    line = pipe.readline()
    if not line.startswith(b"YUV4MPEG2 "):
        raise SystemExit("vspipe wrote no y4m stream (its error is above)")
    tags = {tag[:1]: tag[1:].decode() for tag in line.split()[1:]}
    if tags.get(b"C") != "444":
        raise SystemExit(f"expected y4m C444 from demo/upscale.vpy, got C{tags.get(b'C')}")
    return int(tags[b"W"]), int(tags[b"H"]), Fraction(tags[b"F"].replace(":", "/"))


def read_frame(pipe, width: int, height: int) -> np.ndarray | None:
    """The next frame's Y, U and V planes as a [3, height, width] array; None at the end."""
    if not pipe.readline().startswith(b"FRAME"):
        return None
    data = pipe.read(3 * width * height)
    if len(data) != 3 * width * height:
        raise SystemExit("the y4m stream ended in the middle of a frame")
    return np.frombuffer(data, np.uint8).reshape(3, height, width)


def to_image(yuv: np.ndarray) -> Image.Image:
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv444p")
    return frame.to_image(src_colorspace="ITU709", src_color_range="MPEG")


def finish(process: subprocess.Popen) -> None:
    process.stdout.close()
    if process.wait() != 0:
        raise SystemExit(f"vspipe failed with exit status {process.returncode} (its error is above)")


def bicubic_frame() -> Image.Image:
    """Frame FRAME upscaled by plain bicubic in the same script."""
    process = vspipe("-a", "bicubic=1", "-s", str(FRAME), "-e", str(FRAME))
    width, height, _ = read_header(process.stdout)
    yuv = read_frame(process.stdout, width, height)
    finish(process)
    return to_image(yuv)


def upscale(output: Path, model: str | None) -> tuple[Image.Image, int, float]:
    """Streams vs-iedvr's frames from vspipe into an H.264 file; returns frame FRAME, the number
    of frames and vspipe's run time (start-up included)."""
    start = time.perf_counter()
    # absolute: vspipe runs the script in demo/
    process = vspipe(*(["-a", f"model={Path(model).resolve()}"] if model else []))
    width, height, rate = read_header(process.stdout)
    with av.open(str(output), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "16", "preset": "medium"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        context = stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = BT709
        context.color_range = LIMITED_RANGE
        count = 0
        while (yuv := read_frame(process.stdout, width, height)) is not None:
            if count == FRAME:
                picture = to_image(yuv)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv444p")  # PyAV converts to 4:2:0
            frame.colorspace, frame.color_range, frame.pts = BT709, LIMITED_RANGE, count
            container.mux(stream.encode(frame))
            count += 1
            log(f"frame {count}: {time.perf_counter() - start:.1f} s")
        finish(process)
        seconds = time.perf_counter() - start
        container.mux(stream.encode())
    return picture, count, seconds


def side_by_side(panels: dict[str, Image.Image]) -> Image.Image:
    """The panels cropped to CROP, next to each other, each with its label."""
    width, height = CROP[2] - CROP[0], CROP[3] - CROP[1]
    out = Image.new("RGB", (width * len(panels), height))
    font = ImageFont.load_default(size=22)
    for index, (label, image) in enumerate(panels.items()):
        out.paste(image.crop(CROP), (index * width, 0))
        draw = ImageDraw.Draw(out)
        box = draw.textbbox((index * width + 10, 8), label, font=font)
        draw.rectangle((box[0] - 6, box[1] - 4, box[2] + 6, box[3] + 4), fill=(0, 0, 0))
        draw.text((index * width + 10, 8), label, fill=(255, 255, 255), font=font)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model file from vs-iedvr export or training (default: the shipped weights)")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    args = parser.parse_args()
    if not VSPIPE.exists():
        raise SystemExit(f"no vspipe next to {sys.executable}: run this with the virtual environment's python")
    args.out.mkdir(parents=True, exist_ok=True)
    video, picture = args.out / "dog-x4.mp4", args.out / "side-by-side.png"

    log(f"bicubic x4 of frame {FRAME}")
    bicubic = bicubic_frame()
    log(f"vs-iedvr x4 of {DEMO / 'dog.mkv'} into {video}")
    upscaled, frames, seconds = upscale(video, args.model)
    side_by_side({"bicubic": bicubic, "vs-iedvr": upscaled}).save(picture)
    print(f"wrote {video} and {picture}")
    print(f"vspipe: {frames} frames in {seconds:.1f} s, {frames / seconds:.2f} frames/s (start-up included)")


if __name__ == "__main__":
    main()
