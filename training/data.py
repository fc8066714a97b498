"""Training and validation data: clips of frames from folders, video files or still photographs
(with synthetic camera motion), cut into random windows of high-resolution patches whose
low-resolution input is made on the fly.

Every sample is a pure function of (seed, sample index): the same index gives the same crop,
augmentation and synthetic motion in any process, so a resumed or distributed run draws exactly
the samples an uninterrupted one would.
"""

import bisect
import concurrent.futures
import hashlib
import itertools
import math
import os
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .codec import CODEC_LEAD_IN, CODEC_MARGIN, compress
from .degradations import bicubic_downscale, gaussian_blur_downscale
from .layered_motion import layered_clip, layered_scene
from .text_scenes import structure_scene, text_scene

# The kinds of layered scene (--layered-fraction), drawn evenly: photographs' shapes over a
# photograph, lettering, regular structure.
SCENES = (layered_scene, text_scene, structure_scene)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".y4m", ".m4v", ".mpg", ".mpeg", ".ts"}


def read_image(path: Path) -> torch.Tensor:
    """RGB image as a uint8 tensor [3, H, W]."""
    from PIL import Image  # training-only dependency

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class DecodedImages:
    """read_image with the decoded images kept in memory up to a byte budget, least recently used
    out first. A run draws the same few thousand frames and photographs again and again, and
    decoding a JPEG or PNG costs more than the rest of a sample. The tensors are shared: callers
    cut and convert them, never write into them. Each data process keeps its own (a pickled copy
    starts empty)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes, self.used_bytes = budget_bytes, 0
        self.images: OrderedDict[Path, torch.Tensor] = OrderedDict()

    def __call__(self, path: Path) -> torch.Tensor:
        image = self.images.get(path)
        if image is not None:
            self.images.move_to_end(path)
            return image
        image = read_image(path)
        if image.nbytes <= self.budget_bytes:
            self.images[path] = image
            self.used_bytes += image.nbytes
            while self.used_bytes > self.budget_bytes:
                self.used_bytes -= self.images.popitem(last=False)[1].nbytes
        return image

    def __getstate__(self):
        return {"budget_bytes": self.budget_bytes}

    def __setstate__(self, state):
        self.__init__(state["budget_bytes"])


@dataclass(frozen=True)
class Clip:
    """Consecutive frames of one shot (image files, in order)."""
    name: str
    frames: tuple[Path, ...]


@dataclass(frozen=True)
class Still:
    """A photograph that synthetic camera motion turns into a clip."""
    name: str
    path: Path


def frame_folders(root: Path, min_frames: int) -> list[Clip]:
    """Every folder under root (root included) holding at least min_frames images is a clip: the
    REDS (train_sharp/000/00000000.png), Vimeo-90K (sequences/00001/0001/im1.png) and
    one-folder-per-clip layouts alike."""
    clips = []
    for folder in sorted({p.parent for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}):
        frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(frames) >= min_frames:
            clips.append(Clip(str(folder.relative_to(root.parent)), tuple(frames)))
    return clips


def decode_video(path: Path, cache: Path) -> Clip:
    """Decodes a video file (anything FFmpeg reads) into PNG frames under cache, once."""
    from PIL import Image  # training-only dependency

    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    target = cache / f"{path.stem}-{digest}"
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        count = 0
        for count, rgb in enumerate(video_frames(path), 1):
            # Level 1: lossless like any level, and several times faster to write than the default
            # (a lent GPU machine decodes the training clips inside its few minutes).
            Image.fromarray(rgb).save(target / f"{count - 1:06d}.png", compress_level=1)
        if not count:  # a truncated file can decode to nothing without an error from FFmpeg
            raise ValueError(f"{path}: no frame could be decoded (a truncated or damaged video?)")
        done.touch()
    return Clip(path.name, tuple(sorted(target.glob("*.png"))))


def video_frames(path: Path):
    """The frames of a video file as RGB arrays [H, W, 3] (uint8), through PyAV, or through OpenCV
    where PyAV is missing (the lent GPU machines have OpenCV's wheel and not PyAV's)."""
    try:
        import av  # training-only dependency; its wheels carry FFmpeg
    except ImportError:
        yield from _opencv_frames(path)
        return
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as error:
        raise ValueError(f"{path}: cannot decode the video ({error})") from None


def _opencv_frames(path: Path):
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        count = 0
        while capture.isOpened():
            ok, bgr = capture.read()
            if not ok:
                break
            count += 1
            yield np.ascontiguousarray(bgr[..., ::-1])
        if not count:
            raise ValueError(f"{path}: cannot decode the video (OpenCV read no frame)")
    finally:
        capture.release()


def find_sources(sources: list[str], min_frames: int, cache: Path) -> tuple[list[Clip], list[Still]]:
    """Clips and stills from a list of sources: video files, folders (their frame folders and
    video files, at any depth), or `stills:FOLDER` (every image in it becomes a synthetic-motion
    clip). Video files are decoded side by side, in threads: the decoders and the PNG encoder
    release the GIL."""
    clips, stills = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for source in sources:
            if source.startswith("stills:"):
                folder = Path(source.removeprefix("stills:"))
                images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                if not images:
                    raise ValueError(f"{source}: no images found in {folder}")
                stills += [Still(str(p.relative_to(folder)), p) for p in images]
                continue
            path = Path(source)
            if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
                clips.append(pool.submit(decode_video, path, cache))
            elif path.is_dir():
                found = frame_folders(path, min_frames)
                videos = sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
                if not found and not videos:
                    raise ValueError(f"{source}: no video file and no folder with at least "
                                     f"{min_frames} frames")
                clips += found + [pool.submit(decode_video, video, cache) for video in videos]
            else:
                raise ValueError(f"{source}: expected a folder of clips, a video file "
                                 f"({', '.join(sorted(VIDEO_SUFFIXES))}) or stills:FOLDER")
        clips = [c.result() if isinstance(c, concurrent.futures.Future) else c for c in clips]
    # Frame folders shorter than a window are left out above; a video is named, not skipped.
    for clip in clips:
        if len(clip.frames) < min_frames:
            raise ValueError(f"{clip.name}: {len(clip.frames)} frame(s), fewer than the "
                             f"{min_frames} of a window; leave it out")
    return clips, stills


def synthetic_motion(image: torch.Tensor, num_frames: int, size: int,
                     generator: torch.Generator, before: int = 0, after: int = 0) -> torch.Tensor:
    """A clip of num_frames [3, size, size] views of an image [3, H, W] (uint8, or float in [0, 1])
    along a smooth random camera path (translation, rotation, zoom) with a mild smooth local deformation;
    with `before` and `after` further frames of the same path on either side (a codec's lead-in).

    The views keep the photograph's sharpness: a random region is cut out and, when the camera
    zooms out (up to 1.6 source pixels per output pixel), reduced with an antialiasing filter
    before the motion resamples it, so that the high-resolution targets carry no aliasing."""
    uniform = lambda low, high: low + (high - low) * torch.rand((), generator=generator).item()
    _, height, width = image.shape
    margin = 1.6  # room for the motion around the view
    zoom_out = min(uniform(1.0, 1.6), min(height, width) / (size * margin))
    region = min(math.ceil(size * zoom_out * margin), height, width)
    top = int(torch.randint(height - region + 1, (), generator=generator))
    left = int(torch.randint(width - region + 1, (), generator=generator))
    image = image[:, top : top + region, left : left + region]
    if not image.is_floating_point():  # converted after the cut: a whole photograph costs 20 ms
        image = image.float() / 255
    if zoom_out > 1:
        image = F.interpolate(image[None], scale_factor=1 / zoom_out, mode="bicubic",
                              antialias=True, align_corners=False)[0]
    height, width = image.shape[-2:]

    # Motion per frame in output pixels and radians: linear plus a gentle curve.
    velocity = torch.tensor([uniform(-3, 3), uniform(-3, 3)])
    acceleration = torch.tensor([uniform(-0.3, 0.3), uniform(-0.3, 0.3)])
    spin, zoom_rate = uniform(-0.01, 0.01), uniform(-0.01, 0.01)
    # A smooth random displacement field shared by the clip, drifting over time.
    warp = torch.randn(2, 2, 4, 4, generator=generator) * 0.004
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    # Interpolation is linear: the field's two parts are upsampled once, then mixed per frame.
    fields = F.interpolate(warp, size=(size, size), mode="bicubic",
                           align_corners=True).permute(0, 2, 3, 1)
    views = []
    for step in range(-(num_frames // 2) - before, num_frames - num_frames // 2 + after):
        shift = velocity * step + acceleration * step * step / 2
        angle, zoom = spin * step, 1 + zoom_rate * step
        cos, sin = math.cos(angle), math.sin(angle)
        x = centre_x + shift[0] + zoom * (cos * gx - sin * gy)
        y = centre_y + shift[1] + zoom * (sin * gx + cos * gy)
        grid = torch.stack([x / (width - 1) * 2 - 1, y / (height - 1) * 2 - 1], dim=-1)[None]
        grid = grid + fields[0] + fields[1] * (step / max(1, num_frames // 2))
        views.append(F.grid_sample(image[None], grid, mode="bicubic", padding_mode="reflection",
                                   align_corners=True)[0])
    return torch.stack(views).clamp(0, 1)


def degrade(high: torch.Tensor, scale: int, degradation: str) -> torch.Tensor:
    """The low-resolution input, quantised to 8 bits as a real video frame would be."""
    if degradation == "BI":
        low = bicubic_downscale(high, scale)
    elif degradation == "BD":
        low = gaussian_blur_downscale(high, scale, sigma=0.4 * scale)  # DUF/BasicSR: 1.6 at x4
    else:
        raise ValueError(f"degradation must be 'BI' or 'BD', got {degradation!r}")
    return (low.clamp(0, 1) * 255).round() / 255


@dataclass(frozen=True)
class Augmentation:
    flip_h: bool = False
    flip_v: bool = False
    rotate: bool = False  # by 90 degrees
    reverse: bool = False  # in time


def draw_augmentation(generator: torch.Generator) -> Augmentation:
    """Each of the four, with probability one half."""
    return Augmentation(*(bool(flag) for flag in torch.rand(4, generator=generator) < 0.5))


def augment(frames: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """The augmentation's flips, rotation and temporal reversal of [T, 3, H, W]."""
    if augmentation.flip_h:
        frames = frames.flip(-1)
    if augmentation.flip_v:
        frames = frames.flip(-2)
    if augmentation.rotate:
        frames = frames.transpose(-1, -2)
    if augmentation.reverse:
        frames = frames.flip(0)
    return frames


def check_clip_sizes(clips: list[Clip], patch_size: int, scale: int) -> None:
    """Every clip's frames hold the high-resolution patch: said at the start, not when the first
    sample of a small clip is drawn, maybe hours into a run."""
    from PIL import Image  # training-only dependency

    for clip in clips:
        with Image.open(clip.frames[0]) as image:  # reads the header only
            width, height = image.size
        if min(width, height) < patch_size * scale:
            raise ValueError(f"clip {clip.name}: frames of {width}x{height} cannot hold the "
                             f"{patch_size * scale}x{patch_size * scale} patch of patch_size "
                             f"{patch_size} at x{scale}: give patch_size at most "
                             f"{min(width, height) // scale} or leave the clip out")


class WindowDataset(torch.utils.data.Dataset):
    """Sample index -> (low [T, 3, P, P], high [3, P*s, P*s]): a random window of num_frames
    consecutive frames of a random clip (or a synthetic-motion clip of a random still, or, in
    layered_fraction of the samples, a layered scene cut from the stills: layered_motion,
    text_scenes), cropped at random, augmented, degraded. Deterministic in (seed, index)."""

    def __init__(self, clips: list[Clip], stills: list[Still], num_frames: int, scale: int,
                 patch_size: int, degradation: str, seed: int, augmentation: bool = True,
                 still_fraction: float = 0.0, codec_fraction: float = 0.0,
                 crf_range: tuple[float, float] = (18.0, 35.0), image_cache_mb: int = 0,
                 layered_fraction: float = 0.0):
        if not clips and not stills:
            raise ValueError("no training data: give at least one clip source or stills:FOLDER")
        if not 0 <= still_fraction <= 1:
            raise ValueError(f"still_fraction must be in [0, 1], got {still_fraction}")
        if not 0 <= codec_fraction <= 1:
            raise ValueError(f"codec_fraction must be in [0, 1], got {codec_fraction}")
        if not 0 <= layered_fraction <= 1:
            raise ValueError(f"layered_fraction must be in [0, 1], got {layered_fraction}")
        if layered_fraction and not stills:
            raise ValueError("layered_fraction: the layered scenes are cut from photographs; "
                             "give them with stills:FOLDER")
        if not 0 <= crf_range[0] <= crf_range[1] <= 51:
            raise ValueError(f"crf_range must be two CRFs from 0 to 51, low first, got {crf_range}")
        if image_cache_mb < 0:
            raise ValueError(f"image_cache_mb must be at least 0, got {image_cache_mb}")
        self.codec_fraction, self.crf_range = codec_fraction, crf_range
        self.layered_fraction = layered_fraction
        self.read_image = DecodedImages(image_cache_mb * 2**20)
        self.clips, self.stills = clips, stills
        check_clip_sizes(clips, patch_size, scale)
        # 0: every window of a clip and every still is one equally likely sample. Otherwise this
        # share of the samples comes from the stills (a few photographs against long clips).
        self.still_fraction = still_fraction if clips and stills else 0.0
        self.num_frames, self.scale, self.patch = num_frames, scale, patch_size
        self.degradation, self.seed, self.augmentation = degradation, seed, augmentation
        # Windows per clip (so that a clip is drawn in proportion to its length), as running
        # totals: sample position p belongs to the first source whose total exceeds p.
        windows = [len(c.frames) - num_frames + 1 for c in clips] + [1] * len(stills)
        self.window_ends = list(itertools.accumulate(windows))

    def preload_images(self) -> int:
        """Decodes the sources' images into the cache until its budget is full, as a long run's
        first steps do (for timings of the steady state); returns how many it holds."""
        paths = [frame for clip in self.clips for frame in clip.frames] + [s.path for s in self.stills]
        for path in paths:
            if self.read_image.used_bytes >= self.read_image.budget_bytes:
                break
            self.read_image(path)
        return len(self.read_image.images)

    def pass_length(self) -> int:
        """Samples in one pass over the data: every window of every clip, every still once."""
        return self.window_ends[-1]

    def generator_for(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, index)) % 2**63)

    def __len__(self) -> int:  # indexes are unbounded; this only satisfies the DataLoader
        return 2**62

    def __getitem__(self, index: int):
        generator = self.generator_for(index)
        position = int(torch.randint(self.pass_length(), (), generator=generator))
        if self.still_fraction:
            clip_windows = self.window_ends[len(self.clips) - 1]
            if torch.rand((), generator=generator).item() < self.still_fraction:
                position = clip_windows + int(torch.randint(len(self.stills), (), generator=generator))
            else:
                position = int(torch.randint(clip_windows, (), generator=generator))
        # Drawn only when asked for, so that runs without the codec keep their samples.
        crf = None
        if self.codec_fraction and torch.rand((), generator=generator).item() < self.codec_fraction:
            low_crf, high_crf = self.crf_range
            crf = round(low_crf + (high_crf - low_crf) * torch.rand((), generator=generator).item())
        # Drawn only when asked for too: runs without layered scenes keep their samples.
        layered = (self.layered_fraction
                   and torch.rand((), generator=generator).item() < self.layered_fraction)
        # Drawn before the frames: a codec sample's lead-in is taken from the side that the
        # temporal reversal turns into the past.
        augmentation = draw_augmentation(generator) if self.augmentation else Augmentation()
        source = bisect.bisect_right(self.window_ends, position)
        position -= self.window_ends[source - 1] if source else 0
        lead_in = 0 if crf is None else CODEC_LEAD_IN
        before, after = (0, lead_in) if augmentation.reverse else (lead_in, 0)
        if layered:
            scene = SCENES[int(torch.randint(len(SCENES), (), generator=generator))]
            pick_photo = lambda: self.read_image(
                self.stills[int(torch.randint(len(self.stills), (), generator=generator))].path)
            margin = 0 if crf is None else 2 * CODEC_MARGIN
            high = layered_clip(pick_photo, self.num_frames, (self.patch + margin) * self.scale,
                                self.scale, generator, scene, before, after)
        elif source < len(self.clips):
            # Near a clip's ends the lead-in is shorter, as a real stream's is after its start.
            clip_paths = self.clips[source].frames
            paths = clip_paths[max(0, position - before) : position + self.num_frames + after]
            frames = torch.stack([self.read_image(p) for p in paths])
            margin = 0 if crf is None else codec_margin(frames.shape[-2:], self.patch, self.scale)
            high = random_crop(frames, (self.patch + margin) * self.scale, generator).float() / 255
        else:
            image = self.read_image(self.stills[source - len(self.clips)].path)
            margin = 0 if crf is None else 2 * CODEC_MARGIN
            high = synthetic_motion(image, self.num_frames, (self.patch + margin) * self.scale,
                                    generator, before, after)
        high = augment(high, augmentation)
        low = degrade(high, self.scale, self.degradation)
        if crf is not None:
            # The lead-in and the window (with its margin) through the codec, so that the window's
            # frames are predicted from earlier ones as in the middle of a stream; then the window,
            # and the patch, cut where the macroblock grid falls anywhere across it.
            low = compress(low, crf)[-self.num_frames :]
            high = high[-self.num_frames :]
            top, left = (int(torch.randint(margin + 1, (), generator=generator)) for _ in range(2))
            low = low[..., top : top + self.patch, left : left + self.patch]
            high = high[..., top * self.scale : (top + self.patch) * self.scale,
                        left * self.scale : (left + self.patch) * self.scale]
        return low, high[self.num_frames // 2]


def codec_margin(frame_size, patch: int, scale: int) -> int:
    """The low-resolution margin (even, at most 2 * CODEC_MARGIN) that a clip's frames hold around
    the patch for a codec sample."""
    room = min(frame_size) // scale - patch
    return max(0, min(2 * CODEC_MARGIN, room) // 2 * 2)


def random_crop(frames: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    _, _, height, width = frames.shape
    if height < size or width < size:
        raise ValueError(f"frames of {width}x{height} are smaller than the {size}x{size} patch")
    top = int(torch.randint(height - size + 1, (), generator=generator))
    left = int(torch.randint(width - size + 1, (), generator=generator))
    return frames[..., top : top + size, left : left + size]


def split_validation(clips: list[Clip], stills: list[Still], fraction: float, seed: int):
    """A fixed split: the same sources go to validation for a given seed and source list."""
    order = list(range(len(clips) + len(stills)))
    random.Random(seed).shuffle(order)
    count = max(1, round(fraction * len(order))) if fraction > 0 and len(order) > 1 else 0
    held_out = set(order[:count])
    pick = lambda items, offset, keep: [x for i, x in enumerate(items) if ((i + offset) in held_out) == keep]
    return ((pick(clips, 0, False), pick(stills, len(clips), False)),
            (pick(clips, 0, True), pick(stills, len(clips), True)))
