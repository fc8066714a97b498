"""The BI and BD degradations against independent oracles: MATLAB's own outputs, a loop-by-loop
transcription of MATLAB's imresize algorithm, Pillow's antialiased bicubic, hand-derived kernel
weights, and BasicSR's duf_downsample convention."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vs_iedvr.training.degradations import (bicubic_downscale, bicubic_upscale,
                                            gaussian_blur_downscale, gaussian_blur_kernel)

# The 8 x 10 test image of the GNU Octave image package's imresize.m (inst/imresize.m, 2022
# rewrite by Christof Kaufmann), whose tests hold reference outputs "from matlab" of
# imresize(uint8(in), 0.5, "bicubic", "Antialiasing", true) and the same with 1/3.
OCTAVE_TEST_IMAGE = [
    [116, 227, 153, 69, 146, 194, 59, 130, 139, 106],
    [2, 47, 137, 249, 90, 75, 16, 24, 158, 44],
    [155, 68, 46, 84, 166, 156, 69, 204, 32, 152],
    [71, 221, 137, 230, 210, 153, 192, 115, 30, 118],
    [107, 143, 108, 52, 51, 73, 101, 21, 175, 90],
    [54, 158, 143, 77, 26, 168, 113, 229, 165, 225],
    [9, 47, 133, 135, 130, 207, 236, 43, 19, 73],
    [129, 60, 59, 243, 64, 181, 249, 56, 32, 86],
]
MATLAB_UINT8_OUTPUT = {
    2: [[105, 140, 126, 81, 109],
        [110, 134, 153, 114, 93],
        [108, 108, 94, 127, 146],
        [67, 126, 162, 149, 62]],
    3: [[115, 135, 97, 101],
        [113, 119, 124, 125],
        [81, 157, 118, 64]],
}


# --- BI: an independent transcription of MATLAB's imresize, one pixel at a time ---------------

def keys_cubic(x: float) -> float:
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def matlab_imresize_1d(signal: list[float], scale: int, enlarge: bool = False) -> list[float]:
    """MATLAB's contributions() and resizeAlongDim for imresize(signal, 1/scale, 'bicubic')
    (or imresize(signal, scale, 'bicubic') when enlarging), written with MATLAB's 1-based
    indices."""
    length = len(signal)
    factor = scale if enlarge else 1 / scale
    antialias = factor < 1
    kernel_width = 4 / factor if antialias else 4
    mirror_table = list(range(1, length + 1)) + list(range(length, 0, -1))
    output = []
    for x in range(1, math.ceil(length * factor) + 1):
        u = x / factor + 0.5 * (1 - 1 / factor)
        left = math.floor(u - kernel_width / 2)
        weighted_sum, weight_total = 0.0, 0.0
        for j in range(left, left + math.ceil(kernel_width) + 2):
            weight = factor * keys_cubic(factor * (u - j)) if antialias else keys_cubic(u - j)
            source = mirror_table[(j - 1) % (2 * length)]
            weighted_sum += weight * signal[source - 1]
            weight_total += weight
        output.append(weighted_sum / weight_total)
    return output


def matlab_imresize_2d(image: list[list[float]], scale: int, enlarge: bool = False) -> list[list[float]]:
    """Columns first (MATLAB resizes height first for equal scales), then rows."""
    columns = [matlab_imresize_1d(list(column), scale, enlarge) for column in zip(*image)]
    rows = [list(row) for row in zip(*columns)]
    return [matlab_imresize_1d(row, scale, enlarge) for row in rows]


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(5, 7), (1, 1), (2, 3), (8, 6)])
def test_bicubic_upscale_matches_loop_transcription_of_matlab(size, scale):
    image = torch.rand(size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.tensor(matlab_imresize_2d(image.tolist(), scale, enlarge=True), dtype=torch.float64)
    result = bicubic_upscale(image, scale)
    assert result.shape == (size[0] * scale, size[1] * scale)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_upscale_keeps_constants_and_interior_ramps(scale):
    assert torch.allclose(bicubic_upscale(torch.full((2, 3, 5, 6), 0.3), scale), torch.tensor(0.3))
    ramp = torch.arange(12, dtype=torch.float64).repeat(4, 1)  # 4 x 12, varying along width
    result = bicubic_upscale(ramp, scale)[0]
    centres = (torch.arange(12 * scale, dtype=torch.float64) + 0.5) / scale - 0.5
    interior = slice(2 * scale, -2 * scale)
    torch.testing.assert_close(result[interior], centres[interior])


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(9, 14), (8, 10), (17, 23), (1, 1), (2, 3), (3, 5)])
def test_bicubic_matches_loop_transcription_of_matlab(size, scale):
    image = torch.rand(size, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    expected = torch.tensor(matlab_imresize_2d(image.tolist(), scale), dtype=torch.float64)
    torch.testing.assert_close(bicubic_downscale(image, scale), expected, rtol=0, atol=1e-12)


def test_bicubic_impulse_response_has_hand_derived_weights():
    # At scale 2 an interior output pixel sits halfway between two input pixels; the stretched
    # cubic at distances 0.5, 1.5, 2.5, 3.5 (halved: 0.25, 0.75, 1.25, 1.75) weighs 0.8671875,
    # 0.2265625, -0.0703125, -0.0234375, which sum to 2 over both sides before normalising.
    signal = torch.zeros(1, 16, dtype=torch.float64)
    signal[0, 8] = 1
    expected = [0, 0, -0.0234375 / 2, 0.2265625 / 2, 0.8671875 / 2, -0.0703125 / 2, 0, 0]
    assert bicubic_downscale(signal, 2)[0].tolist() == expected


def test_bicubic_matches_matlab_reference_outputs():
    image = torch.tensor(OCTAVE_TEST_IMAGE, dtype=torch.float64)
    for scale, matlab in MATLAB_UINT8_OUTPUT.items():
        matlab = torch.tensor(matlab, dtype=torch.float64)
        # The float result rounds to within 1 of MATLAB's uint8 one ...
        assert (bicubic_downscale(image, scale) - matlab).abs().max() < 1
        # ... and exactly to it when MATLAB's uint8 pipeline is followed: it stores the
        # height-resized intermediate as uint8 before resizing the width. Width first would be
        # off by one in places, so these numbers also confirm MATLAB's height-first order.
        assert torch.equal(matlab_uint8_pipeline(image, scale), matlab)
        width_first = matlab_uint8_pipeline(image.T, scale).T
        assert not torch.equal(width_first, matlab)


def matlab_uint8_pipeline(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Height, round to uint8, width, round to uint8, each pass as a one-pixel-wide resize
    (resizing a length-1 axis is the identity)."""
    def to_uint8(x):
        return x.round().clamp(0, 255)

    columns = to_uint8(bicubic_downscale(image.T[:, :, None], scale)[:, :, 0].T)
    return to_uint8(bicubic_downscale(columns[:, None, :], scale)[:, 0, :])


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_bicubic_keeps_constant_images_constant(scale):
    image = torch.full((3, 17, 23), 0.37)
    low = bicubic_downscale(image, scale)
    torch.testing.assert_close(low, torch.full_like(low, 0.37), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_reproduces_a_linear_ramp_in_the_interior(scale):
    rows = torch.arange(40, dtype=torch.float64)[:, None]
    cols = torch.arange(52, dtype=torch.float64)[None, :]
    low = bicubic_downscale(0.3 * rows - 0.7 * cols + 5, scale)
    # Output pixel i is centred on input coordinate (i + 0.5) * scale - 0.5.
    centre_rows = (torch.arange(low.shape[0], dtype=torch.float64)[:, None] + 0.5) * scale - 0.5
    centre_cols = (torch.arange(low.shape[1], dtype=torch.float64)[None, :] + 0.5) * scale - 0.5
    expected = 0.3 * centre_rows - 0.7 * centre_cols + 5
    m = interior_margin(scale)
    torch.testing.assert_close(low[m:-m, m:-m], expected[m:-m, m:-m], rtol=0, atol=1e-10)


def interior_margin(scale: int) -> int:
    """Output pixels to skip at each border so that the rest read no input pixel within
    2 * scale + 2 of a border (an output pixel reads input within 2 * scale of its centre)."""
    return math.ceil((2 * scale + 2) / scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_interior_matches_pillow(scale):
    # Pillow's BICUBIC is the same a = -0.5 cubic, stretched by the scale when reducing, with the
    # same pixel centres; only the borders differ (Pillow drops the taps outside the image and
    # renormalises instead of mirroring).
    array = np.random.default_rng(3).random((48, 60), dtype=np.float32)
    pillow = Image.fromarray(array).resize((60 // scale, 48 // scale), Image.Resampling.BICUBIC,
                                           reducing_gap=None)
    pillow = torch.from_numpy(np.asarray(pillow, dtype=np.float32).copy())
    low = bicubic_downscale(torch.from_numpy(array), scale)
    m = interior_margin(scale)
    torch.testing.assert_close(low[m:-m, m:-m], pillow[m:-m, m:-m], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("scale", "expected"), [(1, (17, 23)), (2, (9, 12)), (3, (6, 8)),
                                                 (4, (5, 6))])
def test_output_sizes_round_up(scale, expected):
    images = torch.rand(2, 3, 3, 17, 23)
    assert bicubic_downscale(images, scale).shape == (2, 3, 3, *expected)
    assert gaussian_blur_downscale(images, scale).shape == (2, 3, 3, *expected)


def test_leading_dimensions_are_independent_images():
    images = torch.rand(2, 3, 20, 24)
    for degrade in (bicubic_downscale, gaussian_blur_downscale):
        batched = degrade(images, 4)
        single = degrade(images[1, 2], 4)
        torch.testing.assert_close(batched[1, 2], single, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtype_is_preserved(dtype):
    images = torch.rand(3, 16, 16).to(dtype)
    assert bicubic_downscale(images, 2).dtype == dtype
    assert gaussian_blur_downscale(images, 2).dtype == dtype


# --- BD -----------------------------------------------------------------------------------------

def test_blur_kernel_is_a_normalised_symmetric_gaussian():
    kernel = gaussian_blur_kernel(13, 1.6)
    assert kernel.shape == (13, 13)
    assert abs(kernel.sum().item() - 1) < 1e-12
    torch.testing.assert_close(kernel, kernel.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(kernel, kernel.flip(1), rtol=0, atol=0)
    torch.testing.assert_close(kernel, kernel.T, rtol=0, atol=0)
    # Ratios between taps are those of exp(-(x^2 + y^2) / (2 sigma^2)).
    ratio = (kernel[6, 9] / kernel[6, 6]).item()
    assert ratio == pytest.approx(math.exp(-9 / (2 * 1.6**2)), rel=1e-12)


def test_blur_kernel_equals_basicsr_scipy_kernel():
    # BasicSR's generate_gaussian_kernel: gaussian_filter of a centred 13 x 13 Dirac delta.
    ndimage = pytest.importorskip("scipy.ndimage")
    delta = np.zeros((13, 13))
    delta[6, 6] = 1
    expected = torch.from_numpy(ndimage.gaussian_filter(delta, 1.6))
    torch.testing.assert_close(gaussian_blur_kernel(13, 1.6), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_blur_downscale_keeps_constant_images_constant(scale):
    images = torch.full((2, 3, 19, 26), 0.61)
    low = gaussian_blur_downscale(images, scale)
    torch.testing.assert_close(low, torch.full_like(low, 0.61), rtol=0, atol=1e-6)


def reflect(index: int, length: int) -> int:
    """torch's 'reflect' padding (the edge pixel is not repeated), for one reflection."""
    if index < 0:
        return -index
    if index >= length:
        return 2 * (length - 1) - index
    return index


def blur_downscale_by_loops(image: np.ndarray, scale: int, size: int, sigma: float) -> np.ndarray:
    radius = size // 2
    profile = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    kernel = np.outer(profile, profile) / profile.sum() ** 2
    height, width = image.shape
    output = np.zeros((math.ceil(height / scale), math.ceil(width / scale)))
    for i in range(output.shape[0]):
        for j in range(output.shape[1]):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    y = reflect(i * scale + dy, height)
                    x = reflect(j * scale + dx, width)
                    output[i, j] += kernel[dy + radius, dx + radius] * image[y, x]
    return output


@pytest.mark.parametrize(("scale", "size", "sigma", "shape"),
                         [(4, 13, 1.6, (17, 23)), (3, 13, 1.2, (16, 14)), (2, 7, 0.8, (9, 10))])
def test_blur_downscale_matches_loops(scale, size, sigma, shape):
    image = np.random.default_rng(5).random(shape)
    expected = blur_downscale_by_loops(image, scale, size, sigma)
    low = gaussian_blur_downscale(torch.from_numpy(image), scale, size, sigma)
    np.testing.assert_allclose(low.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("scale", "shape"), [(2, (32, 30)), (3, (33, 31)), (4, (64, 45))])
def test_blur_downscale_keeps_the_pixels_duf_downsample_keeps(scale, shape):
    # BasicSR's duf_downsample: reflect-pad by kernel_size // 2 + 2 * scale, convolve with stride
    # scale, then drop two outputs on each side.
    images = torch.rand(1, 1, *shape, dtype=torch.float64)
    kernel = gaussian_blur_kernel(13, 1.6)[None, None]
    pad = 13 // 2 + 2 * scale
    duf = F.conv2d(F.pad(images, (pad, pad, pad, pad), mode="reflect"), kernel, stride=scale)
    duf = duf[:, :, 2:-2, 2:-2]
    torch.testing.assert_close(gaussian_blur_downscale(images, scale), duf, rtol=0, atol=1e-12)


# --- errors and devices ---------------------------------------------------------------------------

@pytest.mark.parametrize("degrade", [bicubic_downscale, gaussian_blur_downscale])
def test_bad_arguments_raise_value_errors_naming_them(degrade):
    images = torch.rand(3, 20, 20)
    for bad_scale in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="scale"):
            degrade(images, bad_scale)
    with pytest.raises(ValueError, match="images"):
        degrade(torch.rand(20), 2)
    with pytest.raises(ValueError, match="images.*floating"):
        degrade(torch.zeros(3, 20, 20, dtype=torch.uint8), 2)


def test_bad_blur_arguments_raise_value_errors_naming_them():
    images = torch.rand(3, 20, 20)
    with pytest.raises(ValueError, match="kernel_size"):
        gaussian_blur_downscale(images, 4, kernel_size=12)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur_downscale(images, 4, sigma=0)
    with pytest.raises(ValueError, match="images"):
        gaussian_blur_downscale(torch.rand(3, 6, 20), 4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    images = torch.rand(2, 3, 40, 44)
    for degrade in (bicubic_downscale, gaussian_blur_downscale):
        on_gpu = degrade(images.cuda(), 4)
        assert on_gpu.is_cuda
        torch.testing.assert_close(on_gpu.cpu(), degrade(images, 4), rtol=0, atol=1e-5)
