"""The low-resolution degradations of the video super-resolution literature, on float tensors
[..., C, H, W] on any device.

BI: MATLAB's `imresize(img, 1/scale, 'bicubic')` (antialiased cubic, a = -0.5), as used to make
the inputs of REDS, Vimeo-90K and Vid4 in EDVR and BasicSR.
BD: a 13x13 Gaussian blur (sigma 1.6) followed by keeping every scale-th pixel, as in DUF and
BasicSR's `duf_downsample`.

Neither clips nor rounds: callers decide how to quantise.
"""

import math
import numbers

import torch
import torch.nn.functional as F


def bicubic_downscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-compatible `imresize(images, 1/scale, 'bicubic')`: [..., H, W] -> [..., ceil(H/scale),
    ceil(W/scale)].

    Output pixel i along an axis is centred on input coordinate (i + 0.5) * scale - 0.5 (pixel
    centres at integers, from 0) and is a weighted sum of the input pixels within 2 * scale of it,
    weighted by the cubic kernel (a = -0.5) stretched by `scale` and normalised to sum to 1.
    Indices outside the image are mirrored with the edge pixel repeated (MATLAB's symmetric
    padding). Height is resized before width, as MATLAB does for equal scales.
    """
    _check_images(images)
    _check_scale(scale)
    original_dtype = images.dtype
    images = images.to(_working_dtype(original_dtype))
    height, width = images.shape[-2:]
    return _bicubic_resize(images, math.ceil(height / scale), math.ceil(width / scale),
                           1 / scale).to(original_dtype)


def bicubic_upscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """MATLAB-compatible `imresize(images, scale, 'bicubic')`: [..., H, W] -> [..., H * scale,
    W * scale], the "bicubic" baseline of super-resolution papers. The same algorithm as
    bicubic_downscale, with the cubic kernel at its own width (no antialiasing when enlarging)."""
    _check_images(images)
    _check_scale(scale)
    original_dtype = images.dtype
    images = images.to(_working_dtype(original_dtype))
    height, width = images.shape[-2:]
    return _bicubic_resize(images, height * scale, width * scale, float(scale)).to(original_dtype)


def _bicubic_resize(images: torch.Tensor, out_height: int, out_width: int, factor: float) -> torch.Tensor:
    # Height before width, as MATLAB does for equal scales.
    rows = _bicubic_resize_last_axis(images.transpose(-1, -2), out_height, factor).transpose(-1, -2)
    return _bicubic_resize_last_axis(rows, out_width, factor)


def gaussian_blur_downscale(images: torch.Tensor, scale: int = 4, kernel_size: int = 13,
                            sigma: float = 1.6) -> torch.Tensor:
    """The BD degradation: [..., H, W] -> [..., ceil(H/scale), ceil(W/scale)].

    Blurs with `gaussian_blur_kernel(kernel_size, sigma)`, padding by kernel_size // 2 with
    reflection that does not repeat the edge pixel (torch's 'reflect'), and keeps the blurred
    pixels at rows and columns 0, scale, 2 * scale, ...

    These are the pixels BasicSR's `duf_downsample` keeps: it pads by kernel_size // 2 + 2 * scale,
    convolves with stride `scale` and drops two outputs on each side, and the pixel values are the
    same because reflection is the same however wide the padding. Its kernel comes from
    scipy.ndimage.gaussian_filter, which cuts the Gaussian off at 4 sigma; for the 13 x 13, sigma 1.6
    kernel the cut-off lies outside the kernel, so the kernels are identical. (DUF and BasicSR use
    sigma = 0.4 * scale; pass it explicitly to match them at scales other than 4.)
    """
    _check_images(images)
    _check_scale(scale)
    _check_kernel(kernel_size, sigma)
    height, width = images.shape[-2:]
    radius = kernel_size // 2
    if radius >= min(height, width):
        raise ValueError(f"images must be larger than kernel_size // 2 = {radius} in height and "
                         f"width for reflect padding, got {height}x{width}")
    original_dtype = images.dtype
    planes = images.to(_working_dtype(original_dtype)).reshape(-1, 1, height, width)
    padded = F.pad(planes, (radius, radius, radius, radius), mode="reflect")
    kernel = gaussian_blur_kernel(kernel_size, sigma).to(device=planes.device, dtype=planes.dtype)
    low = F.conv2d(padded, kernel[None, None], stride=scale)
    return low.reshape(*images.shape[:-2], *low.shape[-2:]).to(original_dtype)


def gaussian_blur_kernel(kernel_size: int = 13, sigma: float = 1.6) -> torch.Tensor:
    """The normalised kernel_size x kernel_size Gaussian of the BD degradation (float64)."""
    _check_kernel(kernel_size, sigma)
    offsets = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    profile = torch.exp(-offsets**2 / (2 * sigma**2))
    profile = profile / profile.sum()
    return torch.outer(profile, profile)


def _bicubic_resize_last_axis(images: torch.Tensor, out_length: int, factor: float) -> torch.Tensor:
    # One matrix product with the taps spread into a dense [in, out] matrix: the same sums as
    # gathering the taps and weighting them, about 20 times faster on a CPU core (the gather of
    # 18 taps per output pixel was 40% of a training sample's cost at x4).
    indices, weights = _bicubic_taps(images.shape[-1], out_length, factor)
    matrix = torch.zeros(out_length, images.shape[-1], dtype=torch.float64)
    matrix.scatter_add_(1, indices, weights)  # mirrored taps may land on the same pixel
    return images @ matrix.T.to(device=images.device, dtype=images.dtype)


def _bicubic_taps(in_length: int, out_length: int, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output pixel: the input indices it reads and their weights, [out_length, taps]
    each, following MATLAB's `contributions` for a resize by `factor` (output/input)."""
    kernel_scale = min(factor, 1.0)  # antialiasing: stretch the kernel only when shrinking
    kernel_width = 4 / kernel_scale  # the cubic's support of 4
    taps = math.ceil(kernel_width) + 2  # as MATLAB; the extra taps get weight 0
    centres = (torch.arange(out_length, dtype=torch.float64) + 0.5) / factor - 0.5
    first = torch.floor(centres - kernel_width / 2)
    positions = first[:, None] + torch.arange(taps, dtype=torch.float64)
    # MATLAB also multiplies by kernel_scale here; the normalisation below cancels it.
    weights = _cubic((centres[:, None] - positions) * kernel_scale)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return _mirror(positions.long(), in_length), weights


def _cubic(distance: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5, MATLAB's 'bicubic'."""
    x = distance.abs()
    inner = (1.5 * x**3 - 2.5 * x**2 + 1) * (x <= 1)
    outer = (-0.5 * x**3 + 2.5 * x**2 - 4 * x + 2) * ((x > 1) & (x <= 2))
    return inner + outer


def _mirror(indices: torch.Tensor, length: int) -> torch.Tensor:
    """Indices into [0, length) through the repeating pattern 0..length-1, length-1..0, which is
    MATLAB's `[1:in_length, in_length:-1:1]` lookup and works even when a window is wider than
    the image."""
    phase = indices % (2 * length)
    return torch.where(phase < length, phase, 2 * length - 1 - phase)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sums of 18 or more weighted taps lose too much in half precision.
    return torch.promote_types(dtype, torch.float32)


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() < 2:
        raise ValueError(f"images must have at least 2 dimensions [..., H, W], got shape "
                         f"{tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must have a floating-point dtype, got {images.dtype}")
    if images.shape[-1] == 0 or images.shape[-2] == 0:
        raise ValueError(f"images must not be empty in H or W, got shape {tuple(images.shape)}")


def _check_scale(scale) -> None:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def _check_kernel(kernel_size, sigma) -> None:
    if (isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral)
            or kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
