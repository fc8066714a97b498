"""Layered synthetic motion: the speed bound read from the network's alignment, frames that agree
with each layer's motion, uncovered background, motion blur, seeded determinism, and the training
data's layered samples."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from vs_iedvr.edvr_blocks import PCDAlignment
from vs_iedvr.training import data
from vs_iedvr.training.train import TrainConfig
from vs_iedvr.training.layered_motion import (Draw, Layer, Motion, Scene, layered_clip,
                                              layered_scene, max_speed, pcd_reach, render,
                                              shape_mask)
from vs_iedvr.training.text_scenes import structure_scene, text_scene

SCENES = [layered_scene, text_scene, structure_scene]


def smooth_photo(height=300, width=400, seed=0) -> torch.Tensor:
    """A photograph stand-in: smooth waves in each channel (uint8 [3, H, W]), detailed enough that
    a misplaced pixel shows, smooth enough that bicubic resampling is nearly exact."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        wave = sum(rng.uniform(0.1, 0.2) * np.sin(rng.uniform(0.03, 0.15) * x
                                                  + rng.uniform(0.03, 0.15) * y + rng.uniform(0, 6))
                   for _ in range(3))
        channels.append(0.5 + wave)
    return torch.from_numpy((np.stack(channels).clip(0, 1) * 255).round().astype(np.uint8))


def rigid_and_sharp(scene: Scene) -> Scene:
    """The scene without the non-rigid warp and the motion blur: its geometry alone."""
    layers = tuple(dataclasses.replace(layer, motion=dataclasses.replace(layer.motion, warp=None))
                   for layer in scene.layers)
    return dataclasses.replace(scene, layers=layers, shutter=0.0)


def photo_picker(generator, count=3):
    photos = [smooth_photo(seed=i) for i in range(count)]
    return lambda: photos[int(torch.randint(count, (), generator=generator))]


def test_the_reach_is_what_the_coarsest_offsets_see():
    """Measured independently of pcd_reach's reading of kernel sizes: the gradient of one l3
    offset with respect to the neighbour's l3 features is non-zero over the pixels that offset
    sees; their half-width, in input pixels (l3 is a quarter of the input), is the reach."""
    torch.manual_seed(0)
    pcd = PCDAlignment(num_feat=4, deformable_groups=1)
    neighbour = torch.randn(1, 4, 15, 15, requires_grad=True)
    reference = torch.randn(1, 4, 15, 15)
    leaky = lambda x: torch.nn.functional.leaky_relu(x, 0.1)
    offset = leaky(pcd.offset_conv2["l3"](leaky(pcd.offset_conv1["l3"](
        torch.cat([neighbour, reference], 1)))))
    offset[0, :, 7, 7].sum().backward()
    columns = torch.nonzero(neighbour.grad.abs().sum(dim=(0, 1, 2)))
    half_width = int(columns.max() - 7)
    assert half_width == int(7 - columns.min())
    assert pcd_reach() == half_width * 4 == 8
    # From the centre frame to the farthest of 5 (2 frames away), at x4 and x2.
    assert max_speed(4, 5) == 16 and max_speed(2, 5) == 8 and max_speed(4, 7) == pytest.approx(32 / 3)


def square_texture(side: int, seed: int) -> torch.Tensor:
    """Opaque RGBA with random colours, so that every pixel is told apart."""
    colours = torch.rand(3, side, side, generator=torch.Generator().manual_seed(seed))
    return torch.cat([colours, torch.ones(1, side, side)])


def translating_scene(size=64, velocity=(5.0, -3.0), shutter=0.0) -> tuple[Scene, Scene]:
    """A background panning one way and a 21x21 square translating another (integer pixels per
    frame, so that the resampling falls on the same sub-pixel phase in every frame); and the same
    background alone."""
    background = Layer(square_texture(96, seed=1), Motion(velocity=(-2.0, 1.0)), background=True)
    square = Layer(square_texture(21, seed=2), Motion(centre=(-6.0, 4.0), velocity=velocity))
    return Scene((background, square), size, shutter), Scene((background,), size, shutter)


def footprint(layer: Layer, t: int, size: int, inset: float) -> torch.Tensor:
    """[size, size] bool: output pixels whose texture point at time t lies at least `inset`
    pixels inside the layer's texture."""
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    q = layer.motion.to_texture(torch.stack([gx, gy], -1), t)
    height, width = layer.texture.shape[-2:]
    return ((q[..., 0].abs() <= (width - 1) / 2 - inset)
            & (q[..., 1].abs() <= (height - 1) / 2 - inset))


def test_a_foreground_pixel_moves_by_its_layers_motion():
    scene, _ = translating_scene()
    frames = render(scene, 5)
    square = scene.layers[1]
    vx, vy = (int(v) for v in square.motion.velocity)
    for t in range(4):
        step = t - 2
        inside = footprint(square, step, scene.size, inset=2)
        assert inside.sum() > 200
        ys, xs = torch.nonzero(inside, as_tuple=True)
        before = frames[t][:, ys, xs]
        after = frames[t + 1][:, ys + vy, xs + vx]
        assert torch.allclose(before, after, atol=1e-5)
        # The background moves differently: the same pixels did not simply stay put.
        assert (frames[t + 1][:, ys, xs] - before).abs().mean() > 0.1


def test_disoccluded_pixels_come_from_the_background():
    scene, background_only = translating_scene(velocity=(9.0, -6.0))
    frames, background = render(scene, 5), render(background_only, 5)
    square = scene.layers[1]
    for t in range(4):
        covered_before = footprint(square, t - 2, scene.size, inset=-2)
        uncovered = footprint(square, t - 2, scene.size, inset=2) & ~footprint(
            square, t - 1, scene.size, inset=-3)
        assert uncovered.sum() > 40
        assert torch.allclose(frames[t + 1][:, uncovered], background[t + 1][:, uncovered], atol=1e-6)
        assert (frames[t][:, uncovered] - background[t][:, uncovered]).abs().mean() > 0.1
        # Away from the square, every frame is the background.
        outside = ~covered_before & ~footprint(square, t - 1, scene.size, inset=-3)
        assert torch.allclose(frames[t + 1][:, outside], background[t + 1][:, outside], atol=1e-6)


def bilinear_at(frame: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """frame [3, S, S] at output points [N, 2] (pixels from the view's centre)."""
    size = frame.shape[-1]
    grid = points / ((size - 1) / 2)
    return torch.nn.functional.grid_sample(frame[None], grid[None, None], mode="bilinear",
                                           align_corners=True)[0, :, 0]


@pytest.mark.parametrize("seed", range(4))
def test_sampled_layers_move_as_their_motion_says(seed):
    """A random scene (rotation, zoom, acceleration; the warp and blur left out) reduced to its
    background and first foreground: a pixel well inside that foreground at frame t is found at
    the place its layer's motion gives at frame t + 1."""
    generator = torch.Generator().manual_seed(seed)
    scene = rigid_and_sharp(layered_scene(photo_picker(generator), 128, 4, max_speed(4, 5),
                                          Draw(generator)))
    scene = Scene(scene.layers[:2], scene.size)
    foreground = scene.layers[1]
    frames = render(scene, 5)
    alpha = foreground.texture[3]
    checked = 0
    for t in range(4):
        step = t - 2
        inside = footprint(foreground, step, scene.size, inset=4)
        ys, xs = torch.nonzero(inside, as_tuple=True)
        points = torch.stack([xs, ys], -1).float() - (scene.size - 1) / 2
        q = foreground.motion.to_texture(points, step)
        # Opaque there (the shape's mask), and still in view at t + 1.
        height, width = alpha.shape
        rows = (q[:, 1] + (height - 1) / 2).round().long().clamp(0, height - 1)
        cols = (q[:, 0] + (width - 1) / 2).round().long().clamp(0, width - 1)
        moved = foreground.motion.to_output(q, step + 1)
        keep = (alpha[rows, cols] > 0.999) & (moved.abs().max(dim=1).values < (scene.size - 1) / 2 - 1)
        keep &= erode(alpha > 0.999, 3)[rows, cols]
        if keep.sum() < 50:
            continue
        before = frames[t][:, ys[keep], xs[keep]]
        followed = bilinear_at(frames[t + 1], moved[keep])
        standing = frames[t + 1][:, ys[keep], xs[keep]]
        error = (followed - before).abs().mean()
        assert error < 0.01
        assert error < (standing - before).abs().mean() / 3 or (standing - before).abs().mean() < 0.01
        checked += 1
    assert checked >= 2, "the foreground should stay in view for most of the window"


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels whose whole (2 radius + 1)^2 neighbourhood is in the mask."""
    size = 2 * radius + 1
    return -torch.nn.functional.max_pool2d(-mask.float()[None, None], size, 1, radius)[0, 0] > 0.5


def edge_ramp(row: torch.Tensor) -> int:
    """Pixels of a row neither black nor white: the width of a blurred edge."""
    return int(((row > 0.05) & (row < 0.95)).sum())


def test_motion_blur_spreads_a_fast_edge_by_its_travel():
    white = torch.ones(4, 40, 40)
    black = torch.cat([torch.zeros(3, 96, 96), torch.ones(1, 96, 96)])
    background = Layer(black, Motion(), background=True)
    for shutter, speed in ((0.0, 12.0), (0.5, 12.0), (0.5, 4.0), (1.0, 12.0)):
        square = Layer(white, Motion(velocity=(speed, 0.0)))
        frames = render(Scene((background, square), 80, shutter), 5)
        ramp = edge_ramp(frames[2][0, 40, :])  # two edges, left and right
        travel = speed * shutter
        assert abs(ramp - 2 * travel) <= 4, (shutter, speed, ramp)
    # The ink is conserved: blur spreads the square, it does not dim it.
    sharp = render(Scene((background, Layer(white, Motion(velocity=(12.0, 0.0)))), 80, 0.0), 5)
    blurred = render(Scene((background, Layer(white, Motion(velocity=(12.0, 0.0)))), 80, 0.5), 5)
    assert float(blurred[2].sum()) == pytest.approx(float(sharp[2].sum()), rel=0.02)


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.__name__)
def test_a_sample_of_each_kind_is_deterministic_for_a_seed(scene):
    def clip(seed):
        generator = torch.Generator().manual_seed(seed)
        return layered_clip(photo_picker(generator), 5, 96, 4, generator, scene)

    first, again, other = clip(7), clip(7), clip(8)
    assert first.shape == (5, 3, 96, 96)
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert (first[1:] - first[:-1]).abs().mean() > 1e-3, "something moves"


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.__name__)
def test_frames_beyond_the_window_continue_the_scene(scene):
    # A codec sample's lead-in: the window's own frames are those rendered without it.
    def clip(before=0, after=0):
        generator = torch.Generator().manual_seed(3)
        return layered_clip(photo_picker(generator), 5, 96, 4, generator, scene, before, after)

    longer = clip(before=4, after=1)
    assert longer.shape == (10, 3, 96, 96)
    assert torch.equal(longer[4:9], clip())


def test_a_translating_layer_keeps_its_motion_before_the_window():
    scene, _ = translating_scene()
    frames = render(scene, 5, before=3)
    square = scene.layers[1]
    vx, vy = (int(v) for v in square.motion.velocity)
    inside = footprint(square, -5, scene.size, inset=2)  # the first of the lead-in frames
    assert inside.sum() > 100  # partly out of the view by then
    ys, xs = torch.nonzero(inside, as_tuple=True)
    assert torch.allclose(frames[0][:, ys, xs], frames[1][:, ys + vy, xs + vx], atol=1e-5)
    assert torch.equal(frames[3:], render(scene, 5))


def test_layers_stay_within_the_alignments_reach():
    """Over many scenes, no layer's centre travels farther from the centre frame to the window's
    ends than the alignment can see (8 input pixels, 32 at x4), and some come close to it."""
    generator = torch.Generator().manual_seed(0)
    pick = lambda: torch.zeros(3, 200, 200, dtype=torch.uint8)
    farthest = []
    for _ in range(30):
        for scene_kind in SCENES:
            scene = scene_kind(pick, 64, 4, max_speed(4, 5), Draw(generator))
            for layer in scene.layers:
                centre = torch.zeros(1, 2)
                at = lambda t: layer.motion.to_output(centre, t) - torch.tensor(layer.motion.centre)
                farthest.append(max(float(at(-2).norm()), float(at(2).norm())))
    assert max(farthest) <= pcd_reach() * 4
    assert max(farthest) > 0.8 * pcd_reach() * 4


def write_stills(folder, count=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = smooth_photo(200, 240, seed=i).permute(1, 2, 0).numpy()
        Image.fromarray(photo).save(folder / f"photo{i}.png")


@pytest.mark.parametrize("codec_fraction", [0.0, 1.0])
def test_the_data_loader_yields_layered_samples_as_the_loop_expects(tmp_path, codec_fraction):
    write_stills(tmp_path / "stills")
    clips, stills = data.find_sources([f"stills:{tmp_path / 'stills'}"], 5, tmp_path)
    dataset = data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=1, layered_fraction=1.0,
                                 codec_fraction=codec_fraction, image_cache_mb=16)
    plain = data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=1, codec_fraction=codec_fraction)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=range(6))
    for index, (low, high) in enumerate(loader):
        assert low.shape == (3, 5, 3, 8, 8) and high.shape == (3, 3, 32, 32)
        assert low.dtype == high.dtype == torch.float32
        assert 0 <= low.min() and low.max() <= 1 and 0 <= high.min() and high.max() <= 1
        assert torch.equal((low * 255).round(), low * 255)  # 8-bit input
        for i in range(3):  # the same samples again, one at a time, and not the stills' ones
            again_low, again_high = dataset[3 * index + i]
            assert torch.equal(again_low, low[i]) and torch.equal(again_high, high[i])
            assert not torch.equal(plain[3 * index + i][1], high[i])


def test_layered_samples_need_photographs_and_a_fraction(tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    for t in range(5):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(clip / f"{t}.png")
    clips, _ = data.find_sources([str(clip)], 5, tmp_path)
    with pytest.raises(ValueError, match="layered_fraction: .*stills:FOLDER"):
        data.WindowDataset(clips, [], 5, 4, 8, "BI", seed=0, layered_fraction=0.5)
    write_stills(tmp_path / "stills", count=1)
    _, stills = data.find_sources([f"stills:{tmp_path / 'stills'}"], 5, tmp_path)
    with pytest.raises(ValueError, match="layered_fraction must be in"):
        data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=0, layered_fraction=1.5)
    with pytest.raises(ValueError, match="--layered-fraction must be a number from 0 to 1"):
        TrainConfig(data=["x"], layered_fraction=-0.1)


def test_layered_fraction_sets_the_share_of_layered_samples(tmp_path):
    """A black clip and a black still: only a layered scene (random colours of lettering and
    patterns, moving layers) makes a sample with colour; with text and structure a third each of
    the layered ones, about two thirds of those show colour whatever the photographs."""
    clip = tmp_path / "clip"
    clip.mkdir()
    for t in range(5):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(clip / f"{t}.png")
    (tmp_path / "stills").mkdir()
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(tmp_path / "stills" / "black.png")
    clips, stills = data.find_sources([str(clip), f"stills:{tmp_path / 'stills'}"], 5, tmp_path)
    shares = {}
    for fraction, count in ((0.0, 50), (0.5, 150)):
        dataset = data.WindowDataset(clips, stills, 5, 4, 4, "BI", seed=0, layered_fraction=fraction,
                                     image_cache_mb=16)
        shares[fraction] = sum(dataset[i][1].max().item() > 0.05 for i in range(count)) / count
    assert shares[0.0] == 0
    assert abs(shares[0.5] - 0.5 * 2 / 3) < 0.12


def test_shapes_are_opaque_inside_with_a_soft_edge():
    """Every kind of mask (blob, ellipse, rounded rectangle) is opaque over most of its texture,
    clear at its corners or along its rim, with an antialiased edge between."""
    for seed in range(24):
        mask = shape_mask(41, 57, Draw(torch.Generator().manual_seed(seed)))[0]
        assert mask[20, 28] == 1
        assert (mask == 1).float().mean() > 0.45
        rim = torch.cat([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert rim.min() < 0.5
        assert ((mask > 0) & (mask < 1)).any()
