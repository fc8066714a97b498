"""Lettering and regular structure for the layered scenes: ink where the glyphs are, patterns
with the period and angle asked for, lettering that is still there a few input pixels high."""

import math

import pytest
import torch

from vs_iedvr.training.degradations import bicubic_downscale
from vs_iedvr.training.layered_motion import Draw
from vs_iedvr.training.text_scenes import pattern_coverage, render_text, text_texture


def ink_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the pixels with ink, bottom and right included."""
    rows = torch.nonzero(mask[0].amax(dim=1) > 0.5).flatten()
    columns = torch.nonzero(mask[0].amax(dim=0) > 0.5).flatten()
    return int(rows.min()), int(rows.max()), int(columns.min()), int(columns.max())


def test_text_renders_ink_where_the_glyphs_are():
    """An I is a tall bar, a dash a wide one; both sit inside the pad, and 'II' has two bars
    with a gap between them."""
    pad, size = 6, 40
    bar = render_text(["I"], size, pad=pad)
    top, bottom, left, right = ink_box(bar)
    assert bottom - top + 1 >= 0.6 * size and right - left + 1 <= 0.25 * size
    # Nothing in the margin, ink right inside it.
    height, width = bar.shape[-2:]
    assert bar[0, :pad - 1].max() == 0 and bar[0, height - pad + 1:].max() == 0
    assert bar[0, :, :pad - 1].max() == 0 and bar[0, :, width - pad + 1:].max() == 0
    assert abs(top - pad) <= 1 and abs(height - 1 - bottom - pad) <= 1
    dash = render_text(["-"], size, pad=pad)
    top, bottom, left, right = ink_box(dash)
    assert right - left + 1 > 2 * (bottom - top + 1)
    columns = render_text(["I I"], size, pad=pad)[0].amax(dim=0) > 0.5
    runs = torch.diff(columns.int()).abs().sum()  # ink, gap, ink: four changes
    assert runs == 4
    # A second line lies below the first.
    two_lines = render_text(["-", "-"], size, pad=pad)
    rows = two_lines[0].amax(dim=1) > 0.5
    assert torch.diff(rows.int()).abs().sum() == 4


def test_bold_and_italic_move_the_ink():
    plain = render_text(["I"], 40, pad=4)
    bold = render_text(["I"], 40, stroke=2, pad=4)
    assert bold.sum() > 1.3 * plain.sum()
    leaning = render_text(["I"], 40, shear=0.25, pad=4)
    rows = [r for r in range(leaning.shape[1]) if leaning[0, r].max() > 0.5]
    centre = lambda r: float((leaning[0, r] * torch.arange(leaning.shape[2])).sum() / leaning[0, r].sum())
    # The top of the bar leans right of its foot by about shear times its height.
    lean = centre(rows[0] + 2) - centre(rows[-1] - 2)
    assert lean == pytest.approx(0.25 * (rows[-1] - rows[0] - 4), abs=2)


def test_small_lettering_still_shows_in_the_input():
    """Letters 3 input pixels high (12 at x4) leave contrast at the input's size; the sign is
    text_texture's share of ink in it."""
    mask = render_text(["Hamburg 42"], 12, pad=4)
    low = bicubic_downscale(mask, 4)
    assert low.shape[-2] <= 6
    assert low.max() - low.min() > 0.3


def test_text_textures_are_signs_or_bare_lettering_that_fit_the_view():
    signs = bare = 0
    for seed in range(30):
        texture = text_texture(128, 4, Draw(torch.Generator().manual_seed(seed)))
        assert texture.shape[0] == 4 and texture.shape[-1] <= round(128 * 1.2)
        assert 0 <= texture.min() and texture.max() <= 1
        if texture[3].min() == 1:  # a sign: opaque, its lettering in another colour
            signs += 1
            assert texture[:3].std(dim=(1, 2)).max() > 0.05
        else:  # bare: the ink's coverage is the alpha, clear around the letters
            bare += 1
            assert texture[3].max() > 0.9 and (texture[3][:, 0] == 0).all()
    assert signs > 5 and bare > 5


@pytest.mark.parametrize("period", [3.0, 8.0, 17.0])
def test_stripes_repeat_at_their_period(period):
    share = pattern_coverage(64, 96, "stripes", period, period, angle=0.0, duty=0.5)[0]
    assert torch.allclose(share, share[:1].expand_as(share))  # the same in every row
    assert share.mean() == pytest.approx(0.5, abs=0.02)
    # Its strongest frequency across the rows is 1 / period.
    spectrum = torch.fft.rfft(share[0] - share[0].mean()).abs()
    frequency = int(spectrum.argmax()) / share.shape[1]
    assert frequency == pytest.approx(1 / period, abs=1.5 / share.shape[1])


def test_patterns_turn_with_their_angle_and_checkerboards_alternate():
    turned = pattern_coverage(64, 64, "stripes", 8.0, 8.0, angle=math.pi / 2, duty=0.5)[0]
    assert torch.allclose(turned, turned[:, :1].expand_as(turned))  # the same in every column
    board = pattern_coverage(32, 32, "checkerboard", 8.0, 8.0, angle=0.0, duty=0.5)[0]
    # Cells of 8 pixels: one cell's centre against its neighbours'.
    assert board[12, 12] + board[12, 20] == pytest.approx(1) and board[12, 12] == board[20, 20]
    grid = pattern_coverage(32, 32, "grid", 8.0, 8.0, angle=0.0, duty=0.25)[0]
    assert grid.mean() == pytest.approx(1 - (1 - 0.125) ** 2, abs=0.03)
    with pytest.raises(ValueError, match="kind must be one of stripes, grid, checkerboard"):
        pattern_coverage(8, 8, "dots", 4.0, 4.0, 0.0, 0.5)
