"""Packs what benchmarks/device_train.sh needs on a lent GPU machine into one folder that fits the
call's carry limit (the working tree and the carried folders travel together, 64 MiB at most):

    python benchmarks/device_data.py data/default .devicedata --max-mib 40

(device_train.sh --prepare gives it what the working tree leaves of the 64 MiB.)

- init.pt: the shipped weights (vs_iedvr/models/default.pt) as a float16 weights-only vs-iedvr
  checkpoint that --init reads, with the steps behind them. The machine's torch may be older than
  the one that traced the model file, and a TorchScript archive need not load there; a plain
  state dict does.
- train/: the default training data (`vs-iedvr-train fetch-data`): every video file and the
  layered scenes' textures (train/textures/, a few MB) as they are (real footage and the layered
  scenes' material are the scarcer kinds), and the photographs, reduced all by one factor and
  written again as JPEG (quality 95, 4:4:4, as fetch-data writes them) when the whole would not
  fit otherwise.
  The factor is the largest of 1.00, 0.98, 0.96, ... that fits, so the same input packs the same.
  Beside the working tree's 23 MiB (three shipped model files) that is 0.58: the 1080-pixel short
  side of 70 of the 84 photographs keeps 626 pixels, still above the largest training view
  (4 x 60 x 1.6^2 = 614 pixels); the smallest (768) keeps 445.
- MANIFEST.md: what was packed, what was reduced or dropped, and the sizes.

The held-out clips stay here: `vs-iedvr-train evaluate` scores the weights that come back.
"""

import argparse
import hashlib
import io
import math
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image

VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".y4m", ".m4v", ".mpg", ".mpeg", ".ts"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MANIFEST_ROOM = 64 * 1024  # kept free for MANIFEST.md
FACTOR_STEP = 0.02


def write_init(model: Path, out: Path) -> str:
    """The model file's weights as a float16 checkpoint; returns a line for the manifest."""
    from vs_iedvr.training.warm_start import read_initial_weights

    initial = read_initial_weights(model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    state = {name: tensor.to(torch.float16) for name, tensor in initial.state.items()}
    # The keys of a training checkpoint (training/checkpoint.py), so that --init counts its steps and
    # hours and `vs-iedvr export --weights` records them.
    torch.save({"model": state, "step": 0, "total_steps": initial.steps, "init_steps": initial.steps,
                "total_hours": initial.hours,
                "best_psnr": float("nan"),
                "config": {"packed_from": str(model), "sha256": digest}}, out)
    return (f"- init.pt ({out.stat().st_size / 2**20:.1f} MiB): the weights of {model} "
            f"(sha256 {digest[:16]}...), {initial.steps} training steps behind them, float16")


def reduced_jpeg(path: Path, factor: float) -> bytes:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if factor < 1:
            size = (round(image.width * factor), round(image.height * factor))
            image = image.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
        return buffer.getvalue()


def fit_photos(photos: list[Path], room: int) -> tuple[float, dict[Path, bytes] | None]:
    """The largest factor on the FACTOR_STEP grid whose photographs fit in `room` bytes, and their
    files (None: as they are)."""
    total = sum(p.stat().st_size for p in photos)
    if total <= room:
        return 1.0, None
    # JPEG bytes shrink more slowly than the area (a reduced photograph has more detail per
    # pixel): as the factor to the power 1.5 or more here. Start a step above that estimate.
    estimate = (room / total) ** (1 / 1.5)
    factor = min(1.0, round(math.ceil(estimate / FACTOR_STEP + 1) * FACTOR_STEP, 2))
    while factor > FACTOR_STEP:
        encoded = {p: reduced_jpeg(p, factor) for p in photos}
        size = sum(len(b) for b in encoded.values())
        print(f"photographs at {factor:.2f} of their size: {size / 2**20:.1f} MiB "
              f"(room {room / 2**20:.1f} MiB)", flush=True)
        if size <= room:
            return factor, encoded
        factor = round(factor - FACTOR_STEP, 2)
    raise SystemExit("the photographs do not fit even at the smallest factor")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the fetched data (data/default)")
    parser.add_argument("out", type=Path, help="the folder to write (emptied first)")
    parser.add_argument("--max-mib", type=float, default=48.0)
    parser.add_argument("--init", type=Path, default=Path("vs_iedvr/models/default.pt"))
    args = parser.parse_args()

    source = args.data / "train"
    videos = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    photos = sorted(p for p in (source / "photos").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    textures = sorted(p for p in (source / "textures").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not videos and not photos:
        raise SystemExit(f"{source}: no videos and no photos/ (run `vs-iedvr-train fetch-data {args.data}`)")
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "train" / "photos").mkdir(parents=True)
    limit = int(args.max_mib * 2**20)

    lines = [write_init(args.init, args.out / "init.pt")]
    for video in videos:
        shutil.copy2(video, args.out / "train" / video.name)
    video_bytes = sum(v.stat().st_size for v in videos)
    lines.append(f"- train/: {len(videos)} video files as fetched, {video_bytes / 2**20:.1f} MiB: "
                 + ", ".join(v.name for v in videos))
    for texture in textures:
        target = args.out / "train" / "textures" / texture.relative_to(source / "textures")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(texture, target)
    texture_bytes = sum(t.stat().st_size for t in textures)
    if textures:
        lines.append(f"- train/textures/: {len(textures)} images as fetched, "
                     f"{texture_bytes / 2**20:.1f} MiB (the layered recipe's further stills)")
    room = (limit - (args.out / "init.pt").stat().st_size - video_bytes - texture_bytes
            - MANIFEST_ROOM)
    if room <= 0:
        raise SystemExit(f"the init weights, the videos and the textures alone exceed {args.max_mib} MiB")
    factor, encoded = fit_photos(photos, room)
    photo_bytes = 0
    for photo in photos:
        target = args.out / "train" / "photos" / photo.relative_to(source / "photos")
        target.parent.mkdir(parents=True, exist_ok=True)
        if encoded is None:
            shutil.copy2(photo, target)
        else:
            target = target.with_suffix(".jpg")
            target.write_bytes(encoded[photo])
        photo_bytes += target.stat().st_size
    before = sum(p.stat().st_size for p in photos)
    lines.append(f"- train/photos/: {len(photos)} photographs, {photo_bytes / 2**20:.1f} MiB"
                 + (" as fetched" if encoded is None else
                    f", reduced to {factor:.2f} of their width and height (Lanczos) and written "
                    f"again as JPEG quality 95, 4:4:4 (fetched: {before / 2**20:.1f} MiB)"))
    lines.append("- dropped: nothing (the held-out clips stay on this machine for `evaluate`)")
    (args.out / "MANIFEST.md").write_text(
        f"# What benchmarks/device_train.sh --prepare packed\n\n"
        f"From {args.data} (its PROVENANCE.md gives the sources and licences), to fit "
        f"{args.max_mib:g} MiB:\n\n" + "\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print("\n".join(lines))
    print(f"packed {args.out}: {total / 2**20:.1f} MiB (limit {args.max_mib:g} MiB)")
    return 0 if total <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
