"""Makes the demo's input clip, demo/dog.mkv: frames 0..15 of a 1920x1080 phone video from the
Debian package forensics-samples-files 1.1.4-5 (CC-BY-SA-4.0, see demo/LICENSE.md), each reduced
to 256x144 with Pillow's antialiased bicubic, stored losslessly (FFV1, RGB, Matroska) at the
source's frame rate.

    .venv/bin/python demo/make_clip.py [SOURCE.mp4]

SOURCE is the package's usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4
(`apt-get download forensics-samples-files && dpkg -x forensics-samples-files_*.deb DIR`).
"""

import sys
from pathlib import Path

import av
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCE = (ROOT / "data/default/downloads/forensics-samples-files/usr/share/forensics-samples/"
          "original-files/movie1/VID_20191220_170832.mp4")
OUTPUT = ROOT / "demo" / "dog.mkv"
FRAMES = 16
SIZE = (256, 144)


def main():
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    with av.open(str(source)) as reader, av.open(str(OUTPUT), "w") as writer:
        video = reader.streams.video[0]
        # guessed_rate is the frames' spacing (90000/2999); average_rate is lowered by a gap after frame 0
        out = writer.add_stream("ffv1", rate=video.guessed_rate)
        out.width, out.height, out.pix_fmt = *SIZE, "bgr0"
        for index, frame in enumerate(reader.decode(video)):
            if index == FRAMES:
                break
            # Pillow widens the kernel by the reduction (antialiasing); reducing_gap=None: no box pre-reduction
            image = frame.to_image().resize(SIZE, Image.Resampling.BICUBIC, reducing_gap=None)
            writer.mux(out.encode(av.VideoFrame.from_image(image).reformat(format="bgr0")))
        writer.mux(out.encode())
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
