"""The compiled iedvr operators: loads libiedvr_ops.so and registers the Python-side pieces
(autograd formula, fake kernels for torch.compile / torch.export / FakeTensor).

The C++ library defines the schemas, the CPU and CUDA kernels and the autocast rule; this module
adds what only Python needs, as pytorch/extension-cpp does.
"""

from pathlib import Path

import torch
import torch.utils.flop_counter
from torch import Tensor

LIBRARY_PATH = Path(__file__).with_name("libiedvr_ops.so")


def _load_library() -> None:
    if not LIBRARY_PATH.exists():
        raise ImportError(
            f"vs_iedvr's compiled operators are missing ({LIBRARY_PATH} does not exist). "
            "Install the package with `pip install --no-build-isolation .` (or run `./run setup` "
            "in a checkout). In the repository's root, `python` imports the unbuilt source folder "
            "instead of the installed package: use `python -P`, the `vs-iedvr` command, or "
            "another folder."
        )
    torch.ops.load_library(str(LIBRARY_PATH))


_load_library()


def _pair(value, name: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    values = list(value)
    if len(values) != 2 or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values


def modulated_deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    deformable_groups: int = 1,
) -> Tensor:
    """Modulated deformable convolution (DCNv2).

    input [N, C_in, H, W]; weight [C_out, C_in / groups, kh, kw]; offset
    [N, 2 * deformable_groups * kh * kw, H_out, W_out] with (dy, dx) interleaved per tap (the
    torchvision / BasicSR layout); mask [N, deformable_groups * kh * kw, H_out, W_out], already
    passed through a sigmoid by the caller.
    """
    return torch.ops.iedvr.modulated_deform_conv2d(
        input,
        offset,
        mask,
        weight,
        bias,
        _pair(stride, "stride"),
        _pair(padding, "padding"),
        _pair(dilation, "dilation"),
        groups,
        deformable_groups,
    )


def output_size(input_size, weight_size, stride, padding, dilation) -> tuple[int, int]:
    """Spatial size of the convolution's output (the same formula as torch.nn.Conv2d)."""
    return tuple(
        (input_size[i] + 2 * padding[i] - dilation[i] * (weight_size[i] - 1) - 1) // stride[i] + 1
        for i in range(2)
    )


@torch.library.register_fake("iedvr::modulated_deform_conv2d")
def _forward_fake(input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups):
    out_h, out_w = output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    return input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))


@torch.library.register_fake("iedvr::modulated_deform_conv2d_backward")
def _backward_fake(grad_output, input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups):
    return (
        torch.empty_like(input),
        torch.empty_like(offset),
        torch.empty_like(mask),
        torch.empty_like(weight),
        weight.new_empty((weight.shape[0],)),
    )


def _setup_context(ctx, inputs, output):
    input, offset, mask, weight, bias, *conv_args = inputs
    ctx.save_for_backward(input, offset, mask, weight, bias)
    ctx.conv_args = conv_args
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, offset, mask, weight, bias = ctx.saved_tensors
    grad_input, grad_offset, grad_mask, grad_weight, grad_bias = (
        torch.ops.iedvr.modulated_deform_conv2d_backward(
            grad_output, input, offset, mask, weight, bias, *ctx.conv_args
        )
    )
    return (
        grad_input,
        grad_offset,
        grad_mask,
        grad_weight,
        grad_bias if ctx.has_bias else None,
        None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "iedvr::modulated_deform_conv2d", _backward, setup_context=_setup_context
)


def has_cuda_kernels() -> bool:
    """Whether the compiled library contains the CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(
        "iedvr::modulated_deform_conv2d", "CUDA"
    )


def modulated_deform_conv2d_flops(
    batch: int, in_channels: int, out_channels: int, out_height: int, out_width: int,
    kernel_size: tuple[int, int], groups: int = 1,
) -> int:
    """Floating-point operations of one call (a multiply-add counts 2): the GEMM of a plain
    convolution of the same shape plus the modulated bilinear sampling (4 multiply-adds and one
    mask multiply per sampled value)."""
    taps = kernel_size[0] * kernel_size[1]
    pixels = batch * out_height * out_width
    gemm = 2 * pixels * out_channels * (in_channels // groups) * taps
    sampling = 9 * pixels * in_channels * taps
    return gemm + sampling


@torch.utils.flop_counter.register_flop_formula(torch.ops.iedvr.modulated_deform_conv2d)
def _flop_formula(input_shape, offset_shape, mask_shape, weight_shape, bias_shape, stride, padding,
                  dilation, groups, deformable_groups, *args, out_shape=None, **kwargs) -> int:
    """Lets torch.utils.flop_counter.FlopCounterMode count the operator."""
    return modulated_deform_conv2d_flops(
        input_shape[0], input_shape[1], weight_shape[0], out_shape[2], out_shape[3],
        tuple(weight_shape[2:]), groups)
