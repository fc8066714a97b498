"""Layered synthetic motion: clips composed of a background and foreground layers, each moving on
its own (translation, rotation, zoom, a smooth non-rigid warp), occluding and uncovering each other,
with motion blur where the speed over the exposure makes it visible.

A still's one camera path (data.synthetic_motion) moves every pixel of a view together. Here each
layer has its own path, so the window holds what real footage of people and objects does and a
single warp never gives: motion boundaries, independent motion, and background that a foreground
uncovers or covers from one frame to the next.

Everything happens at the high resolution, before the degradation (bicubic or the codec), as for
the stills. A layer is an RGBA texture (straight alpha, float in [0, 1]); the renderer maps each
output pixel back into each layer's texture (so the texture is resampled once per frame, never
warped twice), averages several instants of the exposure for motion blur, and composites back to
front with premultiplied alpha.

The speeds reach the largest the network's alignment can see (max_speed): faster ones would only
teach it that the neighbours are useless.
"""

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

BLUR_STEP = 1.5  # high-resolution pixels of travel between two instants of one exposure
MAX_BLUR_INSTANTS = 10  # at the top speed and a full shutter: 16 px at x4 in 10 instants
WARP_PIXELS = 2.0  # standard deviation of the non-rigid warp's control points, texture pixels


@functools.cache
def pcd_reach(num_feat: int = 1) -> int:
    """How far, in low-resolution pixels, the network's PCD alignment can look for a neighbour's
    content: the coarsest pyramid level (l3, a quarter of the input's size: two stride-2
    convolutions) predicts its offsets from concat(neighbour, reference) through a stack of
    convolutions, each of which widens what an offset sees by (kernel - 1) / 2 level pixels. The
    finer levels only refine what l3 found within a few of their own pixels. Read from the
    network's own PCDAlignment, so that a change of its design changes the bound here."""
    from vs_iedvr.edvr_blocks import PCDAlignment

    pcd = PCDAlignment(num_feat=num_feat, deformable_groups=1)
    convs = [pcd.offset_conv1["l3"], pcd.offset_conv2["l3"]]
    level_pixels = sum((conv.kernel_size[0] - 1) // 2 for conv in convs)
    return level_pixels * 4  # l3 pixels are 4 input pixels


def max_speed(scale: int, num_frames: int) -> float:
    """The fastest motion, in high-resolution pixels per frame, that the alignment can follow from
    the centre frame to the window's farthest neighbour (num_frames // 2 frames away): 16 at x4
    with 5 frames (an 8-pixel reach at the input's resolution over 2 frames)."""
    return pcd_reach() * scale / max(1, num_frames // 2)


@dataclass(frozen=True)
class Motion:
    """Where a layer is at time t (frames from the window's centre, fractions for the exposure):
    texture point q (pixels from the texture's centre) lands at output point
    centre + shift(t) + zoom(t) * rotation(t) @ (q + warp(q, t)), output pixels from the view's
    centre."""
    centre: tuple[float, float] = (0.0, 0.0)  # (x, y) at t = 0
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels per frame
    acceleration: tuple[float, float] = (0.0, 0.0)  # pixels per frame per frame
    angle: float = 0.0  # radians at t = 0
    spin: float = 0.0  # radians per frame
    zoom: float = 1.0  # at t = 0
    zoom_rate: float = 0.0  # relative change per frame
    # [2, 2, 4, 4]: a smooth displacement field (x, y) over the texture, in texture pixels, and
    # its drift per half-window; None: rigid.
    warp: torch.Tensor | None = None

    def affine(self, t: float) -> tuple[float, float, float, float]:
        """(x, y, zoom, angle) at time t."""
        x = self.centre[0] + self.velocity[0] * t + self.acceleration[0] * t * t / 2
        y = self.centre[1] + self.velocity[1] * t + self.acceleration[1] * t * t / 2
        return x, y, self.zoom * (1 + self.zoom_rate * t), self.angle + self.spin * t

    def to_output(self, q: torch.Tensor, t: float) -> torch.Tensor:
        """Rigid part: texture points [..., 2] (from its centre) -> output points at time t."""
        x, y, zoom, angle = self.affine(t)
        cos, sin = math.cos(angle), math.sin(angle)
        return torch.stack([x + zoom * (cos * q[..., 0] - sin * q[..., 1]),
                            y + zoom * (sin * q[..., 0] + cos * q[..., 1])], dim=-1)

    def to_texture(self, points: torch.Tensor, t: float) -> torch.Tensor:
        """Inverse of to_output: output points [..., 2] -> texture points at time t."""
        x, y, zoom, angle = self.affine(t)
        cos, sin = math.cos(angle), math.sin(angle)
        dx, dy = points[..., 0] - x, points[..., 1] - y
        return torch.stack([(cos * dx + sin * dy) / zoom, (-sin * dx + cos * dy) / zoom], dim=-1)


@dataclass(frozen=True)
class Layer:
    texture: torch.Tensor  # [4, h, w] RGBA, straight alpha, in [0, 1]
    motion: Motion
    background: bool = False  # covers the view: its texture is mirrored past its edges


@dataclass(frozen=True)
class Scene:
    layers: tuple[Layer, ...]  # back to front; the first is the background
    size: int  # the square view's side, high-resolution pixels
    shutter: float = 0.0  # exposure as a fraction of the frame interval; 0: no motion blur


def render(scene: Scene, num_frames: int, before: int = 0, after: int = 0) -> torch.Tensor:
    """The scene's frames [T, 3, size, size] in [0, 1], frame t at time t - T // 2, with `before`
    and `after` further frames on either side (T = num_frames + before + after)."""
    size = scene.size
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([gx, gy], dim=-1)  # output pixels from the view's centre
    premultiplied = [torch.cat([layer.texture[:3] * layer.texture[3:], layer.texture[3:]])
                     for layer in scene.layers]
    frames = []
    for t in range(-(num_frames // 2) - before, num_frames - num_frames // 2 + after):
        frame = torch.zeros(3, size, size)
        for layer, texture in zip(scene.layers, premultiplied):
            window = covered_window(layer, t, scene.shutter, size)
            if window is None:
                continue
            top, bottom, left, right = window
            instants = exposure(layer, t, scene.shutter)
            # Within a blurred exposure the instants' average hides the kernel: bilinear is as
            # good there, and a few times faster than bicubic.
            mode = "bicubic" if len(instants) == 1 else "bilinear"
            rgba = sum(sample(layer, texture, points[top:bottom, left:right], time, mode)
                       for time in instants)
            rgba = rgba / len(instants)
            under = frame[:, top:bottom, left:right]
            frame[:, top:bottom, left:right] = rgba[:3] + under * (1 - rgba[3:])
        frames.append(frame)
    return torch.stack(frames).clamp(0, 1)


def sample(layer: Layer, premultiplied: torch.Tensor, points: torch.Tensor, t: float,
           mode: str = "bicubic") -> torch.Tensor:
    """The layer's premultiplied RGBA [4, h, w] (from its texture, premultiplied) at output points
    [h, w, 2] at time t."""
    height, width = premultiplied.shape[-2:]
    q = layer.motion.to_texture(points, t)
    if layer.motion.warp is not None:
        q = q + warp_at(layer.motion.warp, q, t, width, height)
    grid = torch.stack([q[..., 0] / max(1, (width - 1) / 2), q[..., 1] / max(1, (height - 1) / 2)], -1)
    padding = "reflection" if layer.background else "zeros"
    rgba = F.grid_sample(premultiplied[None], grid[None], mode=mode, padding_mode=padding,
                         align_corners=True)[0]
    # Bicubic overshoots: keep colours within their coverage.
    alpha = rgba[3:].clamp(0, 1)
    return torch.cat([torch.minimum(rgba[:3].clamp(min=0), alpha), alpha])


def warp_at(warp: torch.Tensor, q: torch.Tensor, t: float, width: int, height: int) -> torch.Tensor:
    """The non-rigid displacement (texture pixels) at texture points q [h, w, 2] at time t: a
    field of 4x4 control points over the texture, interpolated bicubically, drifting with t."""
    grid = torch.stack([q[..., 0] / max(1, (width - 1) / 2), q[..., 1] / max(1, (height - 1) / 2)], -1)
    field = warp[0] + warp[1] * t / 2
    return F.grid_sample(field[None], grid[None], mode="bicubic", padding_mode="border",
                         align_corners=True)[0].permute(1, 2, 0)


def texture_corners(layer: Layer) -> torch.Tensor:
    height, width = layer.texture.shape[-2:]
    x, y = (width - 1) / 2, (height - 1) / 2
    return torch.tensor([[-x, -y], [x, -y], [-x, y], [x, y]])


def travel(layer: Layer, start: float, end: float) -> float:
    """The farthest any corner of the layer's texture moves from time start to end (pixels)."""
    corners = texture_corners(layer)
    return float((layer.motion.to_output(corners, end) - layer.motion.to_output(corners, start))
                 .norm(dim=-1).max())


def exposure(layer: Layer, t: float, shutter: float) -> list[float]:
    """The instants averaged into frame t: one without blur; else enough over the open shutter
    that the layer moves at most BLUR_STEP pixels between two of them."""
    if shutter <= 0:
        return [float(t)]
    start, end = t - shutter / 2, t + shutter / 2
    count = min(MAX_BLUR_INSTANTS, max(1, math.ceil(travel(layer, start, end) / BLUR_STEP) + 1))
    if count == 1:
        return [float(t)]
    return [start + (end - start) * k / (count - 1) for k in range(count)]


def covered_window(layer: Layer, t: float, shutter: float, size: int):
    """(top, bottom, left, right) of the view that the layer can reach during frame t's exposure
    (the whole view for the background), or None when it is out of sight: a small foreground is
    resampled over its own box only."""
    if layer.background:
        return 0, size, 0, size
    corners = texture_corners(layer)
    reach = torch.cat([layer.motion.to_output(corners, time)
                       for time in (t - shutter / 2, t, t + shutter / 2)])
    # The warp and the bicubic kernel reach a few pixels past the corners.
    margin = 3 + (0 if layer.motion.warp is None else 4 * float(layer.motion.warp.abs().max()))
    low = (reach.min(dim=0).values - margin + (size - 1) / 2).floor().int().tolist()
    high = (reach.max(dim=0).values + margin + (size - 1) / 2).ceil().int().tolist()
    left, top = max(0, low[0]), max(0, low[1])
    right, bottom = min(size, high[0] + 1), min(size, high[1] + 1)
    if left >= right or top >= bottom:
        return None
    return top, bottom, left, right


# -- random scenes ---------------------------------------------------------------------------------

class Draw:
    """Random numbers from one torch.Generator (so that a sample is a function of its seed)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def integer(self, low: int, high: int) -> int:
        """From low to high, both included."""
        return int(torch.randint(low, high + 1, (), generator=self.generator))

    def chance(self, probability: float) -> bool:
        return torch.rand((), generator=self.generator).item() < probability

    def choice(self, items):
        return items[self.integer(0, len(items) - 1)]


def random_motion(draw: Draw, speed_limit: float, centre: tuple[float, float], rigid: bool = False,
                  spin_limit: float = 0.03) -> Motion:
    """A path whose translation stays within speed_limit pixels per frame over the window: the
    speed is drawn evenly up to 85% of it (acceleration takes the rest), in any direction."""
    speed, heading = draw.uniform(0, 0.85 * speed_limit), draw.uniform(0, 2 * math.pi)
    push, push_heading = draw.uniform(0, 0.15 * speed_limit), draw.uniform(0, 2 * math.pi)
    warp = None if rigid else torch.randn(2, 2, 4, 4, generator=draw.generator) * WARP_PIXELS
    return Motion(centre=centre,
                  velocity=(speed * math.cos(heading), speed * math.sin(heading)),
                  acceleration=(push * math.cos(push_heading), push * math.sin(push_heading)),
                  angle=0.0 if rigid else draw.uniform(-0.3, 0.3),
                  spin=draw.uniform(-spin_limit, spin_limit),
                  zoom=1.0, zoom_rate=draw.uniform(-0.02, 0.02), warp=warp)


def photo_crop(image: torch.Tensor, height: int, width: int, draw: Draw) -> torch.Tensor:
    """A random region of a photograph ([3, H, W], uint8 or float) as float RGB [3, height, width],
    taken from up to 1.6 times larger and reduced with an antialiasing filter (objects at several
    scales, and sharp targets); smaller where the photograph is."""
    _, full_height, full_width = image.shape
    reduce = min(draw.uniform(1.0, 1.6), full_height / height, full_width / width)
    reduce = max(reduce, 1.0)
    region_h = min(full_height, math.ceil(height * reduce))
    region_w = min(full_width, math.ceil(width * reduce))
    top = draw.integer(0, full_height - region_h)
    left = draw.integer(0, full_width - region_w)
    crop = image[:, top : top + region_h, left : left + region_w]
    if not crop.is_floating_point():
        crop = crop.float() / 255
    out_h, out_w = min(height, round(region_h / reduce)), min(width, round(region_w / reduce))
    if (out_h, out_w) != (region_h, region_w):
        crop = F.interpolate(crop[None], size=(out_h, out_w), mode="bicubic", antialias=True,
                             align_corners=False)[0].clamp(0, 1)
    return crop


def shape_mask(height: int, width: int, draw: Draw) -> torch.Tensor:
    """An antialiased alpha mask [1, height, width]: a wobbly blob (a radius varying smoothly with
    the angle), an ellipse or a rectangle with rounded corners, filling most of the texture."""
    y = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    x = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    gy, gx = torch.meshgrid(y, x, indexing="ij")
    half_h, half_w = (height - 1) / 2, (width - 1) / 2
    kind = draw.integer(0, 2)
    if kind == 2:  # rounded rectangle: distance outside the inner rectangle
        radius = draw.uniform(0, 0.4) * min(half_h, half_w)
        past = torch.stack([gx.abs() - (half_w - radius), gy.abs() - (half_h - radius)])
        # The signed distance to the rounded edge, in pixels: > 0 inside.
        edge_distance = radius - past.clamp(min=0).norm(dim=0) - past.amax(dim=0).clamp(max=0)
        return (edge_distance + 0.5).clamp(0, 1)[None]
    # Polar: radius of the shape at each pixel's angle, against the pixel's (scaled) radius.
    angle = torch.atan2(gy / max(half_h, 1), gx / max(half_w, 1))
    reach = torch.ones_like(angle)
    if kind == 0:
        for harmonic in range(2, 6):
            reach = reach + draw.uniform(-0.12, 0.12) * torch.cos(harmonic * angle + draw.uniform(0, 6.3))
    reach = reach * 0.92
    rho = torch.sqrt((gx / max(half_w, 1)) ** 2 + (gy / max(half_h, 1)) ** 2)
    # (reach - rho) in pixels along the smaller half-axis: a one-pixel antialiased edge.
    return ((reach - rho) * min(half_h, half_w) + 0.5).clamp(0, 1)[None]


def photo_layer(image: torch.Tensor, size: int, draw: Draw) -> torch.Tensor:
    """A foreground cut from a photograph: [4, h, w] RGBA, a shape of a fifth to two thirds of
    the view."""
    height, width = (draw.integer(size // 5, 2 * size // 3) for _ in range(2))
    crop = photo_crop(image, height, width, draw)
    return torch.cat([crop, shape_mask(*crop.shape[-2:], draw)])


def background_layer(image: torch.Tensor, size: int, speed_limit: float, draw: Draw) -> Layer:
    """The camera's view of a photograph: a region holding the view's travel over the window
    (mirrored past it where the photograph is smaller), moving as the camera pans."""
    extent = math.ceil(size * 1.5 + 4 * speed_limit)
    crop = photo_crop(image, extent, extent, draw)
    texture = torch.cat([crop, torch.ones_like(crop[:1])])
    motion = random_motion(draw, speed_limit, (0.0, 0.0), spin_limit=0.01)
    return Layer(texture, motion, background=True)


def place(texture: torch.Tensor, size: int, speed_limit: float, draw: Draw,
          rigid: bool = False) -> Layer:
    """A foreground texture at a random place in the view with a random motion of its own."""
    reach = size / 2 * 0.8
    centre = (draw.uniform(-reach, reach), draw.uniform(-reach, reach))
    return Layer(texture, random_motion(draw, speed_limit, centre, rigid=rigid))


def layered_scene(pick_photo: Callable[[], torch.Tensor], size: int, scale: int,
                  speed_limit: float, draw: Draw) -> Scene:
    """A photograph's view under 1 to 3 foreground shapes cut from photographs, all moving on
    their own, the exposure half a frame or less (none in a quarter of the scenes)."""
    layers = [background_layer(pick_photo(), size, speed_limit, draw)]
    for _ in range(draw.integer(1, 3)):
        layers.append(place(photo_layer(pick_photo(), size, draw), size, speed_limit, draw))
    return Scene(tuple(layers), size, shutter=random_shutter(draw))


def random_shutter(draw: Draw) -> float:
    return 0.0 if draw.chance(0.25) else draw.uniform(0.1, 0.5)


def layered_clip(pick_photo: Callable[[], torch.Tensor], num_frames: int, size: int, scale: int,
                 generator: torch.Generator, scene=layered_scene, before: int = 0,
                 after: int = 0) -> torch.Tensor:
    """A clip [T, 3, size, size] in [0, 1] of a random scene (layered_scene, or text_scenes'
    text_scene or structure_scene) made of photographs (pick_photo draws one, [3, H, W] uint8),
    at speeds up to max_speed(scale, num_frames); `before` and `after` frames beyond the window
    as in render."""
    draw = Draw(generator)
    scene = scene(pick_photo, size, scale, max_speed(scale, num_frames), draw)
    return render(scene, num_frames, before, after)

