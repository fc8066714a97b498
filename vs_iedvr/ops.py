"""The compiled iedvr operators: loads libiedvr_ops.so and registers the Python-side pieces
(autograd formula, fake kernels for torch.compile / torch.export / FakeTensor).

The C++ library defines the schemas, the CPU and CUDA kernels and the autocast rule; this module
adds what only Python needs, as pytorch/extension-cpp does.
"""

from pathlib import Path

import torch
import torch._prims_common
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


def _check_args(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                deformable_groups) -> tuple[int, int]:
    """The C++ operator's argument checks (csrc/ops/dcn_op.cpp), with its messages, for the fake
    kernels: torch.compile and torch.export trace with fake tensors and never run the C++ checks,
    so without these a wrong shape would surface later as a different error, or none. With
    symbolic sizes each check becomes a guard or a runtime assertion of the traced program.
    Returns the output's spatial size."""
    op = "iedvr::modulated_deform_conv2d: "
    for tensor, name, layout in (
        (input, "input", "[N, C_in, H, W]"),
        (offset, "offset", "[N, 2 * deformable_groups * kh * kw, H_out, W_out]"),
        (mask, "mask", "[N, deformable_groups * kh * kw, H_out, W_out]"),
        (weight, "weight", "[C_out, C_in / groups, kh, kw]"),
    ):
        torch._check(tensor.dim() == 4, lambda: f"{op}{name} must be a 4-D tensor {layout}, "
                                                f"got {tensor.dim()}-D with shape {list(tensor.shape)}")
    torch._check(input.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16),
                 lambda: f"{op}input must be float32, float64, float16 or bfloat16, got {input.dtype}")
    for tensor, name in ((offset, "offset"), (mask, "mask"), (weight, "weight"), (bias, "bias")):
        if tensor is not None:
            torch._check(tensor.dtype == input.dtype,
                         lambda: f"{op}{name} has dtype {tensor.dtype} but input has {input.dtype}")
    torch._check(groups >= 1 and deformable_groups >= 1,
                 lambda: f"{op}groups and deformable_groups must be >= 1, got {groups} and "
                         f"{deformable_groups}")
    torch._check(min(stride) >= 1 and min(dilation) >= 1 and min(padding) >= 0,
                 lambda: f"{op}stride and dilation must be >= 1 and padding >= 0, got {stride}, "
                         f"{dilation} and {padding}")
    batch, in_channels = input.shape[:2]
    out_channels, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    torch._check(in_channels >= 1 and input.shape[2] >= 1 and input.shape[3] >= 1,
                 lambda: f"{op}input must have at least one channel, row and column, got shape "
                         f"{list(input.shape)}")
    torch._check(out_channels >= 1 and kh >= 1 and kw >= 1,
                 lambda: f"{op}weight must have at least one output channel and a kernel size "
                         f">= 1, got shape {list(weight.shape)}")
    torch._check(in_channels % groups == 0 and out_channels % groups == 0,
                 lambda: f"{op}input channels ({in_channels}) and output channels "
                         f"({out_channels}) must be divisible by groups ({groups})")
    torch._check(weight.shape[1] * groups == in_channels,
                 lambda: f"{op}weight must have shape [C_out, C_in / groups, kh, kw] with "
                         f"C_in / groups = {in_channels // groups}, got weight shape "
                         f"{list(weight.shape)}")
    torch._check(in_channels % deformable_groups == 0,
                 lambda: f"{op}input channels ({in_channels}) must be divisible by "
                         f"deformable_groups ({deformable_groups})")
    out_h, out_w = output_size(input.shape[2:], (kh, kw), stride, padding, dilation)
    torch._check(out_h >= 1 and out_w >= 1,
                 lambda: f"{op}input of {input.shape[2]}x{input.shape[3]} with padding "
                         f"{list(padding)} is smaller than the dilated kernel")
    taps = kh * kw
    for tensor, name, expected, layout in (
        (offset, "offset", [batch, 2 * deformable_groups * taps, out_h, out_w],
         "[N, 2 * deformable_groups * kh * kw, H_out, W_out]"),
        (mask, "mask", [batch, deformable_groups * taps, out_h, out_w],
         "[N, deformable_groups * kh * kw, H_out, W_out]"),
    ):
        for size, wanted in zip(tensor.shape, expected):
            torch._check(size == wanted, lambda: f"{op}{name} must have shape {layout} = "
                                                 f"{expected}, got {list(tensor.shape)}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == out_channels,
                     lambda: f"{op}bias must have shape [C_out] = [{out_channels}], got "
                             f"{list(bias.shape)}")
    return out_h, out_w


@torch.library.register_fake("iedvr::modulated_deform_conv2d")
def _forward_fake(input, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups):
    out_h, out_w = _check_args(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                               deformable_groups)
    # The kernels return the input's memory format, as at::conv2d does.
    output = input.new_empty((input.shape[0], weight.shape[0], out_h, out_w))
    return output.contiguous(memory_format=torch._prims_common.suggest_memory_format(input))


@torch.library.register_fake("iedvr::modulated_deform_conv2d_backward")
def _backward_fake(grad_output, input, offset, mask, weight, bias, stride, padding, dilation,
                   groups, deformable_groups, output_mask=(True,) * 5):
    out_h, out_w = _check_args(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                               deformable_groups)
    expected = [input.shape[0], weight.shape[0], out_h, out_w]
    torch._check(grad_output.dim() == 4 and all(a == b for a, b in zip(grad_output.shape, expected)),
                 lambda: f"iedvr::modulated_deform_conv2d: grad_output must have shape "
                         f"[N, C_out, H_out, W_out] = {expected}, got {list(grad_output.shape)}")
    # Each in the memory format of the tensor it is the gradient of, as the kernels return it.
    def like(tensor):
        return tensor.new_empty(tensor.shape).contiguous(
            memory_format=torch._prims_common.suggest_memory_format(tensor))

    grads = (like(input), like(offset), like(mask), like(weight), weight.new_empty((weight.shape[0],)))
    # The kernels return no tensor (None) for a gradient the mask leaves out.
    return tuple(grad if wanted else None for grad, wanted in zip(grads, output_mask))


def _setup_context(ctx, inputs, output):
    input, offset, mask, weight, bias, *conv_args = inputs
    ctx.save_for_backward(input, offset, mask, weight, bias)
    ctx.conv_args = conv_args


def _backward(ctx, grad_output):
    input, offset, mask, weight, bias = ctx.saved_tensors
    # needs_input_grad[4] is False without a bias; the kernels skip whatever is not asked for.
    output_mask = list(ctx.needs_input_grad[:5])
    grads = torch.ops.iedvr.modulated_deform_conv2d_backward(
        grad_output, input, offset, mask, weight, bias, *ctx.conv_args, output_mask)
    return (*grads, None, None, None, None, None)


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
