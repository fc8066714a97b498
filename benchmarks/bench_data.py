"""Milliseconds per training sample of the default weights' recipe (`./run train-default`: x4,
32x32 patches, 60% stills, optionally the codec's share), made on one thread as a data worker
makes them: decoding every time (--image-cache-mb 0) against the decoded-image cache once it
holds the sources, in turn.

    .venv/bin/python -P benchmarks/bench_data.py [--samples 200 --rounds 2 --codec-fraction 0.8]

The cache is filled by reading every frame and photograph of the data once before its rounds (a
run's steady state: nearly all of the default data's 1,555 images are drawn within its first
thousand steps). Both sides make the same samples (indexes 0 to --samples - 1).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from vs_iedvr.training.data import WindowDataset, find_sources
from vs_iedvr.training.default_data import VIDEOS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "default"
CLIPS = [video.name for video in VIDEOS if video.split == "train"]  # as fetch-data writes them


def dataset(cache_mb: int, codec_fraction: float, decoded: Path) -> WindowDataset:
    sources = [f"stills:{DATA / 'train' / 'photos'}"] + [str(DATA / "train" / c) for c in CLIPS]
    clips, stills = find_sources(sources, 5, decoded)
    return WindowDataset(clips, stills, 5, 4, 32, "BI", seed=0, still_fraction=0.6,
                         codec_fraction=codec_fraction, crf_range=(18, 32), image_cache_mb=cache_mb)


def ms_per_sample(data: WindowDataset, samples: int) -> float:
    started = time.perf_counter()
    for index in range(samples):
        data[index]
    return (time.perf_counter() - started) / samples * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="samples per round (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each, in turn (default 2)")
    parser.add_argument("--codec-fraction", type=float, default=0.0)
    parser.add_argument("--decoded", default=str(ROOT / "runs" / "bench-data-decoded"),
                        help="where the videos' frames are decoded to (once)")
    args = parser.parse_args()
    if not (DATA / "train").is_dir():
        parser.error(f"{DATA}/train is missing: run `vs-iedvr-train fetch-data {DATA}` first")
    torch.set_num_threads(1)  # as in a data-loader worker
    uncached = dataset(0, args.codec_fraction, Path(args.decoded))
    cached = dataset(4096, args.codec_fraction, Path(args.decoded))
    held = cached.preload_images()
    total = sum(len(clip.frames) for clip in cached.clips) + len(cached.stills)
    print(f"cache: {held} of {total} images, {cached.read_image.used_bytes / 2**20:.0f} MiB")
    times = {"decoding every time": [], "cached": []}
    for _ in range(args.rounds):
        times["decoding every time"].append(ms_per_sample(uncached, args.samples))
        times["cached"].append(ms_per_sample(cached, args.samples))
    for name, values in times.items():
        print(f"{name:22s} {statistics.median(values):7.1f} ms a sample "
              f"({', '.join(f'{v:.1f}' for v in values)})")
    ratios = [a / b for a, b in zip(times["decoding every time"], times["cached"])]
    print(f"cached / decoding: {', '.join(f'{r:.2f}x' for r in ratios)} the samples per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
