"""PSNR and SSIM as the BasicSR evaluation protocol computes them (EDVR, BasicVSR papers).

Images are torch tensors of RGB in [0, 1], shaped [3, H, W] (one image) or [N, 3, H, W] (a batch).
All arithmetic is in float64 on the [0, 255] scale, so the constants match BasicSR's.

Return convention of `psnr` and `ssim`: a float for one [3, H, W] image, a list of floats (one per
image) for an [N, 3, H, W] batch.

Scores on a test set are averaged first over the frames of each clip, then over the clips
(`average_per_clip`), so long clips do not outweigh short ones.
"""

import math
import operator

import torch
import torch.nn.functional as F

# BasicSR's SSIM window: cv2.getGaussianKernel(11, 1.5), outer product with itself.
SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2

# MATLAB rgb2ycbcr (ITU-R BT.601, studio swing): weights of R, G, B in [0, 1], result on [0, 255].
Y_WEIGHTS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB images in [0, 1], as MATLAB's rgb2ycbcr gives it on the [0, 255] scale:
    Y = 16 + 65.481 R + 128.553 G + 24.966 B, so black is 16 and white is 235.

    [3, H, W] gives [1, H, W] and [N, 3, H, W] gives [N, 1, H, W], float64 (not rounded).
    """
    batch = _as_float64_batch(images, "images")
    red, green, blue = batch[:, 0:1], batch[:, 1:2], batch[:, 2:3]
    luma = Y_OFFSET + Y_WEIGHTS[0] * red + Y_WEIGHTS[1] * green + Y_WEIGHTS[2] * blue
    return luma if images.dim() == 4 else luma[0]


def psnr(prediction: torch.Tensor, target: torch.Tensor, crop_border: int = 0,
         y_channel: bool = False) -> float | list[float]:
    """Peak signal-to-noise ratio in dB, 10 log10(255^2 / MSE), per image.

    The MSE is over all channels and pixels left after removing `crop_border` pixels from each
    side; with `y_channel` it is over the BT.601 Y channel only (see `rgb_to_y`). Identical images
    give inf. Returns a float for a [3, H, W] image, a list of floats for an [N, 3, H, W] batch.
    """
    predictions, targets = _prepare_pair(prediction, target, crop_border, y_channel)
    mse_per_image = ((predictions - targets) ** 2).mean(dim=(1, 2, 3))
    scores = [_psnr_from_mse(mse) for mse in mse_per_image.tolist()]
    return scores if prediction.dim() == 4 else scores[0]


def ssim(prediction: torch.Tensor, target: torch.Tensor, crop_border: int = 0,
         y_channel: bool = False) -> float | list[float]:
    """Structural similarity as BasicSR's calculate_ssim computes it, per image.

    11 x 11 Gaussian window (sigma 1.5), C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, local statistics
    only where the window lies wholly inside the (cropped) image ('valid' filtering, no padding);
    the SSIM map is averaged per channel and the channels are averaged. Returns a float for a
    [3, H, W] image, a list of floats for an [N, 3, H, W] batch.
    """
    predictions, targets = _prepare_pair(prediction, target, crop_border, y_channel)
    height, width = predictions.shape[-2:]
    if height < SSIM_WINDOW_SIZE or width < SSIM_WINDOW_SIZE:
        raise ValueError(f"ssim needs at least {SSIM_WINDOW_SIZE} x {SSIM_WINDOW_SIZE} pixels after "
                         f"crop_border={crop_border}, got {height} x {width}")
    ssim_map = _ssim_map(predictions, targets)
    # Mean over pixels per channel, then over channels: equal-sized channels make this the plain
    # mean over both, which is what BasicSR's per-channel loop gives.
    scores = ssim_map.mean(dim=(1, 2, 3)).tolist()
    return scores if prediction.dim() == 4 else scores[0]


def average_per_clip(scores_by_clip: dict[str, list[float]]) -> tuple[dict[str, float], float]:
    """Mean score of each clip over its frames, and the mean of those over the clips.

    Returns ({clip: mean over its frames}, mean over clips). An infinite PSNR (a frame reproduced
    exactly) makes its clip's mean and the overall mean infinite, as in BasicSR.
    """
    if not scores_by_clip:
        raise ValueError("scores_by_clip is empty: no clips to average")
    per_clip = {}
    for clip, scores in scores_by_clip.items():
        if len(scores) == 0:
            raise ValueError(f"scores_by_clip[{clip!r}] is empty: no frames to average")
        per_clip[clip] = math.fsum(scores) / len(scores)
    overall = math.fsum(per_clip.values()) / len(per_clip)
    return per_clip, overall


def _psnr_from_mse(mse: float) -> float:
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(255.0 ** 2 / mse)


def _prepare_pair(prediction: torch.Tensor, target: torch.Tensor, crop_border: int,
                  y_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as [N, C, H, W] float64 on [0, 255], cropped, optionally reduced to Y."""
    predictions = _as_float64_batch(prediction, "prediction")
    targets = _as_float64_batch(target, "target")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target differ in shape: {tuple(prediction.shape)} "
                         f"vs {tuple(target.shape)}")
    predictions = _crop(predictions, crop_border)
    targets = _crop(targets, crop_border)
    if y_channel:
        return rgb_to_y(predictions), rgb_to_y(targets)
    return predictions * 255.0, targets * 255.0


def _as_float64_batch(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        # An integer tensor is most likely [0, 255]; reading it as [0, 1] would be silently wrong.
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got {images.dtype}")
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"{name} must be RGB shaped [3, H, W] or [N, 3, H, W], "
                         f"got {tuple(images.shape)}")
    batch = images if images.dim() == 4 else images[None]
    return batch.to(torch.float64)


def _crop(images: torch.Tensor, crop_border: int) -> torch.Tensor:
    # operator.index accepts NumPy integers as well as ints, and refuses floats.
    try:
        valid = not isinstance(crop_border, bool) and operator.index(crop_border) >= 0
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    crop_border = operator.index(crop_border)
    height, width = images.shape[-2:]
    if 2 * crop_border >= min(height, width):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {height} x {width} image")
    if crop_border == 0:
        return images
    return images[..., crop_border:height - crop_border, crop_border:width - crop_border]


def _gaussian_window_1d(device: torch.device) -> torch.Tensor:
    offsets = torch.arange(SSIM_WINDOW_SIZE, dtype=torch.float64, device=device)
    offsets = offsets - (SSIM_WINDOW_SIZE - 1) / 2
    weights = torch.exp(-offsets ** 2 / (2 * SSIM_SIGMA ** 2))
    return weights / weights.sum()


def _local_mean(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted mean of each window lying wholly inside the image, channel by channel."""
    channels = images.shape[1]
    # The 2-D window is the outer product of the 1-D one, so two 1-D passes give the same result
    # with 22 instead of 121 multiplications per pixel.
    vertical = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    horizontal = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    filtered = F.conv2d(images, vertical, groups=channels)
    return F.conv2d(filtered, horizontal, groups=channels)


def _ssim_map(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    window = _gaussian_window_1d(predictions.device)
    mean_p = _local_mean(predictions, window)
    mean_t = _local_mean(targets, window)
    variance_p = _local_mean(predictions * predictions, window) - mean_p ** 2
    variance_t = _local_mean(targets * targets, window) - mean_t ** 2
    covariance = _local_mean(predictions * targets, window) - mean_p * mean_t
    luminance_term = (2 * mean_p * mean_t + SSIM_C1) / (mean_p ** 2 + mean_t ** 2 + SSIM_C1)
    structure_term = (2 * covariance + SSIM_C2) / (variance_p + variance_t + SSIM_C2)
    return luminance_term * structure_term
