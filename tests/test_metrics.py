"""PSNR, SSIM, Y conversion and clip averaging against independent oracles: hand-computed values,
closed forms, scikit-image's structural_similarity and a direct 2-D 'valid' correlation."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.signal import correlate2d
from skimage.metrics import structural_similarity

from vs_iedvr.training.metrics import average_per_clip, psnr, rgb_to_y, ssim

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


def smooth_image(seed: int, height: int = 40, width: int = 48) -> np.ndarray:
    """A [3, H, W] float64 image in [0, 1] with structure at several scales, like a natural image."""
    noise = np.random.default_rng(seed).random((3, height, width))
    image = gaussian_filter(noise, sigma=(0, 2, 2))
    return (image - image.min()) / (image.max() - image.min())


def add_noise(image: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    return np.clip(image + sigma * np.random.default_rng(seed).standard_normal(image.shape), 0, 1)


def skimage_ssim(prediction: np.ndarray, target: np.ndarray) -> float:
    """SSIM of [C, H, W] arrays on [0, 255] with the settings that define BasicSR's SSIM.

    skimage filters with reflect padding (truncate 3.5, sigma 1.5: an 11-tap window) but then drops
    (11 - 1) // 2 = 5 pixels from each side of the SSIM map before averaging. What remains are
    exactly the windows lying wholly inside the image, i.e. BasicSR's 'valid' filtering, so the two
    agree to rounding (measured difference ~1e-16), not just approximately. Arrays must be float64:
    skimage keeps float32 input in float32.
    """
    return structural_similarity(prediction, target, data_range=255, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, channel_axis=0)


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image)


# --- Identical images ---------------------------------------------------------------------------

def test_identical_images_give_infinite_psnr_and_unit_ssim():
    image = as_tensor(smooth_image(0))
    assert psnr(image, image) == math.inf
    assert psnr(image, image, y_channel=True) == math.inf
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    assert ssim(image, image, y_channel=True) == pytest.approx(1.0, abs=1e-12)


# --- PSNR ---------------------------------------------------------------------------------------

def test_psnr_of_a_uniform_error_of_ten_levels():
    target = torch.full((3, 16, 20), 0.5, dtype=torch.float64)
    prediction = target + 10 / 255
    assert psnr(prediction, target) == pytest.approx(10 * math.log10(255 ** 2 / 100), rel=1e-12)


def test_psnr_pools_the_squared_error_over_channels():
    # Errors of 10, 0 and 20 levels in R, G, B: MSE (100 + 0 + 400) / 3, not a mean of three PSNRs.
    target = torch.full((3, 12, 12), 0.25, dtype=torch.float64)
    prediction = target.clone()
    prediction[0] += 10 / 255
    prediction[2] += 20 / 255
    assert psnr(prediction, target) == pytest.approx(10 * math.log10(255 ** 2 / (500 / 3)), rel=1e-12)


def test_psnr_on_y_of_a_grey_error():
    # For grey pixels Y = 16 + 219 v, so a grey error of 10 levels is 10 * 219 / 255 levels of Y.
    target = torch.full((3, 12, 12), 0.5, dtype=torch.float64)
    prediction = target + 10 / 255
    y_error = 10 * 219 / 255
    assert psnr(prediction, target, y_channel=True) == pytest.approx(
        10 * math.log10(255 ** 2 / y_error ** 2), rel=1e-12)


def test_crop_border_ignores_a_corrupted_border():
    target = torch.full((3, 20, 24), 0.5, dtype=torch.float64)
    prediction = target + 10 / 255
    corrupted = prediction.clone()
    corrupted[:, :4, :] = 1.0
    corrupted[:, -4:, :] = 0.0
    corrupted[:, :, :4] = 1.0
    corrupted[:, :, -4:] = 0.0
    expected = 10 * math.log10(255 ** 2 / 100)
    assert psnr(corrupted, target) < expected - 1
    assert psnr(corrupted, target, crop_border=4) == pytest.approx(expected, rel=1e-12)
    assert psnr(corrupted, target, crop_border=3) < expected - 1


def test_psnr_of_a_batch_is_one_float_per_image():
    target = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    prediction = target.clone()
    prediction[1] += 10 / 255
    scores = psnr(prediction, target)
    assert isinstance(scores, list) and len(scores) == 2
    assert scores[0] == math.inf
    assert scores[1] == pytest.approx(10 * math.log10(255 ** 2 / 100), rel=1e-12)
    assert isinstance(psnr(prediction[1], target[1]), float)


# --- Y conversion -------------------------------------------------------------------------------

@pytest.mark.parametrize("rgb, expected_y", [
    ((1.0, 1.0, 1.0), 235.0),
    ((0.0, 0.0, 0.0), 16.0),
    ((1.0, 0.0, 0.0), 16.0 + 65.481),
    ((0.0, 1.0, 0.0), 16.0 + 128.553),
    ((0.0, 0.0, 1.0), 16.0 + 24.966),
])
def test_rgb_to_y_of_known_colours(rgb, expected_y):
    image = torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1).expand(3, 2, 3)
    luma = rgb_to_y(image)
    assert luma.shape == (1, 2, 3)
    assert luma.dtype == torch.float64
    assert torch.allclose(luma, torch.full_like(luma, expected_y), rtol=0, atol=1e-12)


def test_rgb_to_y_of_a_batch_keeps_the_batch():
    batch = torch.rand(4, 3, 5, 6)
    luma = rgb_to_y(batch)
    assert luma.shape == (4, 1, 5, 6)
    assert torch.allclose(luma[2], rgb_to_y(batch[2]))


# --- SSIM ---------------------------------------------------------------------------------------

def test_ssim_of_constant_images_is_the_luminance_term():
    # No variance anywhere, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1) in every window.
    a, b = 100.0, 110.0
    prediction = torch.full((3, 16, 16), a / 255, dtype=torch.float64)
    target = torch.full((3, 16, 16), b / 255, dtype=torch.float64)
    expected = (2 * a * b + C1) / (a ** 2 + b ** 2 + C1)
    assert ssim(prediction, target) == pytest.approx(expected, rel=1e-12)


def test_ssim_matches_skimage_on_rgb():
    target = smooth_image(0)
    prediction = add_noise(target, 0.05)
    expected = skimage_ssim(prediction * 255, target * 255)
    assert 0.3 < expected < 0.95  # a case where the window statistics matter
    assert ssim(as_tensor(prediction), as_tensor(target)) == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_skimage_on_y_and_with_a_crop():
    target = smooth_image(2)
    prediction = add_noise(target, 0.08, seed=3)
    y_prediction = rgb_to_y(as_tensor(prediction)).numpy()
    y_target = rgb_to_y(as_tensor(target)).numpy()
    assert ssim(as_tensor(prediction), as_tensor(target), y_channel=True) == pytest.approx(
        skimage_ssim(y_prediction, y_target), abs=1e-12)
    border = 4
    inner = (slice(None), slice(border, -border), slice(border, -border))
    assert ssim(as_tensor(prediction), as_tensor(target), crop_border=border) == pytest.approx(
        skimage_ssim(prediction[inner] * 255, target[inner] * 255), abs=1e-12)


def test_ssim_matches_a_direct_valid_correlation_with_the_2d_window():
    # BasicSR's formula transcribed with the full 11 x 11 window and scipy's 'valid' mode, checking
    # the separable filtering and the per-channel averaging.
    offsets = np.arange(11) - 5.0
    window_1d = np.exp(-offsets ** 2 / (2 * 1.5 ** 2))
    window = np.outer(window_1d, window_1d) / window_1d.sum() ** 2

    def mean_of(x):
        return correlate2d(x, window, mode="valid")

    def channel_ssim(x, y):
        mx, my = mean_of(x), mean_of(y)
        vx, vy, cxy = mean_of(x * x) - mx ** 2, mean_of(y * y) - my ** 2, mean_of(x * y) - mx * my
        return (((2 * mx * my + C1) * (2 * cxy + C2))
                / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))).mean()

    target = smooth_image(4, height=30, width=23)
    prediction = add_noise(target, 0.1, seed=5)
    expected = np.mean([channel_ssim(prediction[c] * 255, target[c] * 255) for c in range(3)])
    assert ssim(as_tensor(prediction), as_tensor(target)) == pytest.approx(expected, abs=1e-12)


def test_ssim_decreases_as_noise_increases():
    target = smooth_image(6)
    scores = [ssim(as_tensor(add_noise(target, sigma)), as_tensor(target))
              for sigma in (0.0, 0.01, 0.03, 0.1, 0.3)]
    assert scores[0] == pytest.approx(1.0, abs=1e-12)
    assert all(later < earlier for earlier, later in zip(scores, scores[1:]))


def test_ssim_of_a_batch_is_one_float_per_image_and_float32_is_computed_in_float64():
    targets = np.stack([smooth_image(7), smooth_image(8)])
    predictions = np.stack([add_noise(targets[0], 0.05), add_noise(targets[1], 0.2)])
    scores = ssim(as_tensor(predictions), as_tensor(targets))
    assert isinstance(scores, list) and len(scores) == 2
    for prediction, target, score in zip(predictions, targets, scores):
        assert score == pytest.approx(ssim(as_tensor(prediction), as_tensor(target)), abs=1e-12)
    as_float32 = [torch.from_numpy(a.astype(np.float32)) for a in (predictions[0], targets[0])]
    as_float64 = [t.double() for t in as_float32]
    assert ssim(*as_float32) == ssim(*as_float64)


# --- Averaging per clip then over clips -----------------------------------------------------------

def test_average_per_clip_then_over_clips():
    per_clip, overall = average_per_clip({"short": [30.0, 32.0], "long": [20.0, 22.0, 24.0, 26.0]})
    assert per_clip == {"short": pytest.approx(31.0), "long": pytest.approx(23.0)}
    # (31 + 23) / 2 = 27, not the frame-pooled (62 + 92) / 6 = 25.67.
    assert overall == pytest.approx(27.0)


def test_average_per_clip_rejects_empty_input():
    with pytest.raises(ValueError, match="scores_by_clip"):
        average_per_clip({})
    with pytest.raises(ValueError, match="empty_clip"):
        average_per_clip({"full": [1.0], "empty_clip": []})


# --- Bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", [psnr, ssim])
def test_bad_input_is_refused_naming_the_argument(metric):
    image = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="prediction and target"):
        metric(image, torch.rand(3, 16, 17))
    with pytest.raises(ValueError, match="prediction"):
        metric(torch.rand(1, 16, 16), torch.rand(1, 16, 16))
    with pytest.raises(ValueError, match="target"):
        metric(image, torch.rand(4, 16, 16))
    with pytest.raises(ValueError, match="crop_border"):
        metric(image, image, crop_border=8)
    with pytest.raises(ValueError, match="crop_border"):
        metric(image, image, crop_border=-1)
    with pytest.raises(TypeError, match="prediction"):
        metric((image * 255).to(torch.uint8), image)


def test_ssim_refuses_an_image_smaller_than_its_window():
    image = torch.rand(3, 16, 16)
    assert isinstance(psnr(image, image.flip(-1), crop_border=3), float)
    with pytest.raises(ValueError, match="crop_border=3"):
        ssim(image, image, crop_border=3)
