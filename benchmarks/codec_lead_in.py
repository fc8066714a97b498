"""How a codec sample's window is coded, against the same frames inside a whole clip (as
`vs-iedvr-train evaluate` and a user's source code them): the PSNR of a window's centre frame
(x4 bicubic downscale, x264 4:2:0 round trip, against the downscale) when the window is encoded
alone, after a lead-in of earlier frames (training/codec.py's CODEC_LEAD_IN), and within the first
`--frames` frames of its clip encoded as one stream.

    .venv/bin/python -P benchmarks/codec_lead_in.py [--crfs 18 28 --lead-ins 0 4 8]

Rows: one per training clip of the default recipe, the mean difference from the whole clip (dB)
for each lead-in; the last row the mean over clips of the absolute differences.
"""

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

from vs_iedvr.training.codec import compress
from vs_iedvr.training.data import degrade, find_sources, read_image
from vs_iedvr.training.default_data import VIDEOS
from vs_iedvr.training.metrics import psnr

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "default"


def low_resolution(paths: list[Path]) -> torch.Tensor:
    """[T, 3, H, W]: the frames' x4 degradation as in training, cut to even sizes for 4:2:0."""
    low = degrade(torch.stack([read_image(p) for p in paths]).float() / 255, 4, "BI")
    return low[..., : low.shape[-2] // 2 * 2, : low.shape[-1] // 2 * 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crfs", type=int, nargs="+", default=[18, 28])
    parser.add_argument("--lead-ins", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--frames", type=int, default=48, help="of each clip, encoded as one stream")
    parser.add_argument("--windows", type=int, default=4, help="windows of 5 frames per clip")
    args = parser.parse_args()
    torch.set_num_threads(1)

    names = [v.name for v in VIDEOS if v.split == "train"]
    clips, _ = find_sources([str(DATA / "train" / n) for n in names], 5, DATA / "decoded")
    print(f"{'clip':<20} {'CRF':>4} " + " ".join(f"{'lead-in ' + str(n):>11}" for n in args.lead_ins))
    absolute = {(crf, n): [] for crf in args.crfs for n in args.lead_ins}
    for name, clip in zip(names, clips):
        count = min(args.frames, len(clip.frames))
        longest = max(args.lead_ins)
        if count < longest + 5:
            print(f"{name:<20} left out: {count} frames, fewer than the longest lead-in and a window")
            continue
        source = low_resolution(clip.frames[:count])
        # Windows after the longest lead-in, spread over the rest of the encoded frames.
        starts = np.linspace(longest, count - 5, args.windows).round().astype(int)
        for crf in args.crfs:
            whole = compress(source, crf)
            differences = []
            for lead_in in args.lead_ins:
                gaps = []
                for start in starts:
                    coded = compress(source[start - lead_in : start + 5], crf)
                    centre = start + 2
                    gaps.append(psnr(coded[lead_in + 2], source[centre])
                                - psnr(whole[centre], source[centre]))
                differences.append(statistics.mean(gaps))
                absolute[crf, lead_in].append(statistics.mean(abs(g) for g in gaps))
            print(f"{name:<20} {crf:>4} " + " ".join(f"{d:>+11.2f}" for d in differences))
    for crf in args.crfs:
        print(f"{'mean |difference|':<20} {crf:>4} "
              + " ".join(f"{statistics.mean(absolute[crf, n]):>11.2f}" for n in args.lead_ins))


if __name__ == "__main__":
    main()
