"""Text and regular structure for the layered scenes: signs and bare lettering, stripes, grids,
checkerboards and facades, moving as the layers of layered_motion do.

The photographs hold little of either, and both are where a super-resolution network is judged:
letters whose strokes are a pixel or two wide at the input's size, and periodic structure near the
input's sampling limit (fabric, railings, windows) that aliases and must not be invented.

The text is drawn with Pillow's built-in scalable font (ImageFont.load_default(size=...), Pillow
10.1 and later): it is the same on every machine, so a sample is the same wherever a run resumes.
Fonts installed on a machine would make the samples depend on the machine.
"""

import math
import string

import numpy as np
import torch
import torch.nn.functional as F

from .layered_motion import Draw, Layer, Scene, background_layer, photo_crop, photo_layer, place, \
    random_motion, random_shutter, shape_mask

CHARACTERS = string.ascii_letters + string.digits
SUPERSAMPLING = 4  # coverage of the patterns' edges from 4x4 samples a pixel


def render_text(lines: list[str], font_size: int, stroke: int = 0, shear: float = 0.0,
                pad: int = 2) -> torch.Tensor:
    """The ink of the lines (Pillow's built-in font at font_size pixels, a stroke width of stroke
    pixels for bold, sheared by shear for italic) as a coverage mask [1, h, w] in [0, 1], with pad
    pixels of margin around the ink's box."""
    from PIL import Image, ImageDraw, ImageFont  # training-only dependency

    font = ImageFont.load_default(size=font_size)
    text = "\n".join(lines)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font, stroke_width=stroke)
    slant = math.ceil(abs(shear) * (bottom - top))
    width, height = right - left + 2 * pad + slant, bottom - top + 2 * pad
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).multiline_text((pad - left + (slant if shear > 0 else 0), pad - top), text,
                                          fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    if shear:
        # x_source = x + shear * (y - height / 2): the top leans right for shear > 0.
        canvas = canvas.transform(canvas.size, Image.Transform.AFFINE,
                                  (1, shear, -shear * height / 2, 0, 1, 0),
                                  resample=Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255)[None]


def random_text(draw: Draw) -> list[str]:
    """1 to 3 lines of 1 to 3 words of 1 to 9 letters and digits."""
    return [" ".join("".join(draw.choice(CHARACTERS) for _ in range(draw.integer(1, 9)))
                     for _ in range(draw.integer(1, 3)))
            for _ in range(draw.integer(1, 3))]


def contrasting_colours(draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random colours whose luma differs by at least 0.3."""
    first = torch.rand(3, generator=draw.generator)
    second = torch.rand(3, generator=draw.generator)
    luma = torch.tensor([0.299, 0.587, 0.114])
    if abs(float((first - second) @ luma)) < 0.3:
        second = 1 - first if abs(float((2 * first - 1) @ luma)) >= 0.15 else \
            torch.full((3,), 0.0 if float(first @ luma) > 0.5 else 1.0)
    return first, second


def text_texture(size: int, scale: int, draw: Draw) -> torch.Tensor:
    """Lettering [4, h, w]: on a sign (a panel of its own colour) or bare, whose letters are 2.5 to
    10 input pixels high at the font's size (a few pixels once downscaled); at most about the
    view's width."""
    font_size = round(draw.uniform(2.5, 10) * scale)
    lines = random_text(draw)
    stroke = 1 if draw.chance(0.2) and font_size >= 16 else 0
    shear = draw.uniform(-0.25, 0.25) if draw.chance(0.3) else 0.0
    pad = draw.integer(2, max(2, font_size // 2))
    mask = render_text(lines, font_size, stroke, shear, pad)
    mask = mask[:, : round(size * 1.2), : round(size * 1.2)]  # long lines run off the sign
    ink, panel = contrasting_colours(draw)
    colour = ink[:, None, None].expand(3, *mask.shape[-2:])
    if draw.chance(0.5):  # a sign
        colour = mask * ink[:, None, None] + (1 - mask) * panel[:, None, None]
        return torch.cat([colour, torch.ones_like(mask)])
    return torch.cat([colour, mask])


def coverage(height: int, width: int, inside) -> torch.Tensor:
    """[1, height, width]: the share of each pixel where inside(u, v) holds (pixel coordinates from
    the texture's centre), from SUPERSAMPLING x SUPERSAMPLING samples: antialiased edges."""
    s = SUPERSAMPLING
    y = (torch.arange(height * s, dtype=torch.float32) + 0.5) / s - height / 2
    x = (torch.arange(width * s, dtype=torch.float32) + 0.5) / s - width / 2
    v, u = torch.meshgrid(y, x, indexing="ij")
    return F.avg_pool2d(inside(u, v).float()[None, None], s)[0]


PATTERNS = ("stripes", "grid", "checkerboard")


def pattern_coverage(height: int, width: int, kind: str, period: float, second_period: float,
                     angle: float, duty: float) -> torch.Tensor:
    """[1, height, width]: the share of each pixel in the pattern's first colour. Stripes across
    the direction `angle` (radians from the x axis) every `period` pixels, `duty` of it wide; a
    grid adds lines along it every `second_period`; a checkerboard has cells of period by
    second_period."""
    if kind not in PATTERNS:
        raise ValueError(f"kind must be one of {', '.join(PATTERNS)}, got {kind!r}")
    cos, sin = math.cos(angle), math.sin(angle)

    def inside(u, v):
        a = (cos * u + sin * v) / period
        b = (-sin * u + cos * v) / second_period
        if kind == "stripes":
            return a - a.floor() < duty
        if kind == "grid":
            return (a - a.floor() < duty / 2) | (b - b.floor() < duty / 2)
        return (a.floor() + b.floor()) % 2 == 0

    return coverage(height, width, inside)


def pattern_texture(height: int, width: int, draw: Draw) -> torch.Tensor:
    """A regular pattern [3, height, width] in two colours: stripes, a grid of lines or a
    checkerboard, at any angle, with a period of 3 to 40 pixels (at x4 from under the input's
    sampling limit to 10 of its pixels)."""
    period = draw.uniform(3, 40)
    share = pattern_coverage(height, width, draw.choice(PATTERNS), period,
                             period * draw.uniform(0.5, 2), draw.uniform(0, math.pi),
                             draw.uniform(0.15, 0.6))
    first, second = contrasting_colours(draw)
    return share * first[:, None, None] + (1 - share) * second[:, None, None]


def facade_texture(image: torch.Tensor, height: int, width: int, draw: Draw) -> torch.Tensor:
    """A facade [3, height, width]: a photograph's crop as a window, repeated in rows and columns
    on a wall of one colour (mullions 1 to 6 pixels wide)."""
    window_h, window_w = draw.integer(6, 40), draw.integer(6, 40)
    wall_h, wall_w = draw.integer(1, 6), draw.integer(1, 6)
    cell = torch.rand(3, 1, 1, generator=draw.generator).expand(3, window_h + wall_h,
                                                                 window_w + wall_w).clone()
    cell[:, wall_h:, wall_w:] = photo_crop(image, window_h, window_w, draw)[:, :window_h, :window_w]
    rows = math.ceil(height / cell.shape[1]) + 1
    columns = math.ceil(width / cell.shape[2]) + 1
    tiled = cell.repeat(1, rows, columns)
    top, left = draw.integer(0, cell.shape[1] - 1), draw.integer(0, cell.shape[2] - 1)
    return tiled[:, top : top + height, left : left + width]


def structure_texture(pick_photo, height: int, width: int, draw: Draw) -> torch.Tensor:
    """Regular structure [3, height, width]: a facade from a photograph (a third) or a pattern."""
    if draw.chance(1 / 3):
        return facade_texture(pick_photo(), height, width, draw)
    return pattern_texture(height, width, draw)


def structure_background(pick_photo, size: int, speed_limit: float, draw: Draw) -> Layer:
    extent = math.ceil(size * 1.5 + 4 * speed_limit)
    texture = structure_texture(pick_photo, extent, extent, draw)
    motion = random_motion(draw, speed_limit, (0.0, 0.0), rigid=True, spin_limit=0.01)
    return Layer(torch.cat([texture, torch.ones_like(texture[:1])]), motion, background=True)


def structure_scene(pick_photo, size: int, scale: int, speed_limit: float, draw: Draw) -> Scene:
    """Regular structure in motion: a structured background (half the scenes; else a photograph)
    under 1 or 2 layers, each a structured panel or a shape cut from a photograph."""
    if draw.chance(0.5):
        layers = [structure_background(pick_photo, size, speed_limit, draw)]
    else:
        layers = [background_layer(pick_photo(), size, speed_limit, draw)]
    for _ in range(draw.integer(1, 2)):
        if draw.chance(0.7):
            height, width = (draw.integer(size // 4, 3 * size // 4) for _ in range(2))
            texture = torch.cat([structure_texture(pick_photo, height, width, draw),
                                 shape_mask(height, width, draw)])
            layers.append(place(texture, size, speed_limit, draw, rigid=draw.chance(0.7)))
        else:
            layers.append(place(photo_layer(pick_photo(), size, draw), size, speed_limit, draw))
    return Scene(tuple(layers), size, shutter=random_shutter(draw))


def text_scene(pick_photo, size: int, scale: int, speed_limit: float, draw: Draw) -> Scene:
    """Lettering in motion: 1 to 3 signs or bare texts (rigid, or waving as on cloth in a fifth)
    over a photograph (or, in a quarter of the scenes, a structure), sometimes partly hidden by a
    shape cut from a photograph."""
    if draw.chance(0.25):
        layers = [structure_background(pick_photo, size, speed_limit, draw)]
    else:
        layers = [background_layer(pick_photo(), size, speed_limit, draw)]
    for _ in range(draw.integer(1, 3)):
        layers.append(place(text_texture(size, scale, draw), size, speed_limit, draw,
                            rigid=not draw.chance(0.2)))
    if draw.chance(0.3):
        layers.append(place(photo_layer(pick_photo(), size, draw), size, speed_limit, draw))
    return Scene(tuple(layers), size, shutter=random_shutter(draw))
