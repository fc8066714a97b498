"""Milliseconds of one core per training sample: each kind of layered scene (training/layered_motion.py,
training/text_scenes.py) against the default recipe's samples, at the recipe's patch sizes, made
on one thread as a data worker makes them, with the photographs decoded in memory (a run's
steady state).

    .venv/bin/python -P benchmarks/bench_layered.py [--samples 60 --patch-sizes 32 60]

Rows: `layered`, `text`, `structure` (that kind alone); `recipe` (the default recipe: 60% stills,
the clips); `recipe + layered 0.3` (what `./run train-default layered` draws). The same sample
indexes on each side.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from vs_iedvr.training.data import SCENES, WindowDataset, find_sources
from vs_iedvr.training.default_data import VIDEOS
from vs_iedvr.training.layered_motion import layered_clip

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "default"
CLIPS = [v.name for v in VIDEOS if v.split == "train" and v.name != "bigbuckbunny.mp4"]


def dataset(patch: int, layered_fraction: float, decoded: Path) -> WindowDataset:
    sources = [f"stills:{DATA / 'train' / 'photos'}"] + [str(DATA / "train" / c) for c in CLIPS]
    if layered_fraction:
        sources += [f"stills:{DATA / 'train' / 'textures'}", str(DATA / "train" / "bigbuckbunny.mp4")]
    clips, stills = find_sources(sources, 5, decoded)
    data = WindowDataset(clips, stills, 5, 4, patch, "BI", seed=0, still_fraction=0.6,
                         layered_fraction=layered_fraction, image_cache_mb=4096)
    data.preload_images()
    return data


def ms_per_sample(make, samples: int) -> float:
    started = time.perf_counter()
    for index in range(samples):
        make(index)
    return (time.perf_counter() - started) / samples * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=60, help="samples per row (default 60)")
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[32, 60])
    parser.add_argument("--decoded", default=str(ROOT / "runs" / "bench-data-decoded"),
                        help="where the videos' frames are decoded to (once)")
    args = parser.parse_args()
    if not (DATA / "train" / "textures").is_dir():
        parser.error(f"{DATA}/train/textures is missing: run `vs-iedvr-train fetch-data {DATA}`")
    torch.set_num_threads(1)  # as in a data-loader worker
    for patch in args.patch_sizes:
        plain = dataset(patch, 0.0, Path(args.decoded))
        mixed = dataset(patch, 0.3, Path(args.decoded))
        photos = [mixed.read_image(s.path) for s in mixed.stills]

        def kind(scene):
            def make(index):
                generator = torch.Generator().manual_seed(index)
                pick = lambda: photos[int(torch.randint(len(photos), (), generator=generator))]
                layered_clip(pick, 5, patch * 4, 4, generator, scene)
            return make

        rows = {scene.__name__.removesuffix("_scene"): kind(scene) for scene in SCENES}
        rows |= {"recipe": plain.__getitem__, "recipe + layered 0.3": mixed.__getitem__}
        print(f"patch {patch}x{patch} (targets {patch * 4}x{patch * 4}), 5 frames, x4:")
        for name, make in rows.items():
            times = [ms_per_sample(make, args.samples // 2) for _ in range(2)]
            print(f"  {name:22s} {statistics.mean(times):6.1f} ms a sample "
                  f"({', '.join(f'{t:.1f}' for t in times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
