"""The demo's picture: one frame from each of several encoded videos, decoded by ffmpeg, cropped to
the dog's face and paws and put next to each other with their labels.

    .venv/bin/python demo/side_by_side.py --ffmpeg FFMPEG LABEL=VIDEO:FRAME... --output OUT.png

`./run demo` calls it with plain bicubic and vs-iedvr, frame 8 of demo/dog.mkv upscaled x4.
"""

import argparse
import io
import subprocess

from PIL import Image, ImageDraw, ImageFont

CROP = (192, 40, 832, 520)  # 640x480 of the 1024x576 output around the dog's face and paws


def decode_frame(ffmpeg: str, video: str, index: int) -> Image.Image:
    """Frame `index` of `video` as RGB. The conversion follows the colour tags of the stream
    (BT.709, limited range, as the demo's encoder writes them); swscale's default rounding and
    chroma interpolation would add a bias of a few levels (measured against VapourSynth's
    conversion of the same frame)."""
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-i", video,
               "-vf", f"select=eq(n\\,{index}),scale=flags=accurate_rnd+full_chroma_int", "-frames:v", "1",
               "-f", "image2pipe", "-c:v", "png", "-pix_fmt", "rgb24", "-"]
    png = subprocess.run(command, stdout=subprocess.PIPE, check=True).stdout
    if not png:
        raise SystemExit(f"{video} has no frame {index}")
    return Image.open(io.BytesIO(png)).convert("RGB")


def side_by_side(panels: dict[str, Image.Image]) -> Image.Image:
    """The panels cropped to CROP, next to each other, each with its label."""
    width, height = CROP[2] - CROP[0], CROP[3] - CROP[1]
    out = Image.new("RGB", (width * len(panels), height))
    font = ImageFont.load_default(size=22)
    draw = ImageDraw.Draw(out)
    for index, (label, image) in enumerate(panels.items()):
        out.paste(image.crop(CROP), (index * width, 0))
        box = draw.textbbox((index * width + 10, 8), label, font=font)
        draw.rectangle((box[0] - 6, box[1] - 4, box[2] + 6, box[3] + 4), fill=(0, 0, 0))
        draw.text((index * width + 10, 8), label, fill=(255, 255, 255), font=font)
    return out


def parse_panel(text: str) -> tuple[str, str, int]:
    label, _, rest = text.partition("=")
    video, _, frame = rest.rpartition(":")
    if not label or not video or not frame.isdigit():
        raise argparse.ArgumentTypeError(f"expected LABEL=VIDEO:FRAME, got {text!r}")
    return label, video, int(frame)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("panels", nargs="+", type=parse_panel, metavar="LABEL=VIDEO:FRAME")
    parser.add_argument("--ffmpeg", default="ffmpeg", help="the ffmpeg to decode with")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    frames = {label: decode_frame(args.ffmpeg, video, index) for label, video, index in args.panels}
    side_by_side(frames).save(args.output)


if __name__ == "__main__":
    main()
