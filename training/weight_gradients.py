"""Convolutions whose weight gradient is computed in float32 under CPU bfloat16 autocast.

oneDNN (torch 2.x on x86) computes a bfloat16 convolution's forward and input gradient with AMX
at 400+ GFLOP/s, but its bfloat16 *weight* gradient at about 9 GFLOP/s on this project's CPUs, a
tenth of the float32 one (`vs-iedvr-train profile` shows it: under autocast it was most of a
training step). Here the forward and the input gradient stay in bfloat16 as autocast runs them,
and the weight gradient is computed from the same bfloat16 values widened to float32 (exactly:
every bfloat16 is a float32), in float32, which is both about 6x faster and more precise than
autocast's (its sums are not rounded to bfloat16 before the optimizer sees them).

use_float32_weight_gradients(network) changes the class of the network's nn.Conv2d and nn.Conv3d
modules in place: their parameters, names and state_dict stay the same, so checkpoints and the
exported model file do not change. Outside CPU bfloat16 autocast (CUDA, float32 training,
inference) they run exactly as nn.Conv2d and nn.Conv3d do.
"""

import torch
from torch import nn

aten = torch.ops.aten


class _Convolution(torch.autograd.Function):
    """conv(x, weight, bias) with x already in bfloat16 and weight, bias in float32."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        low_weight = weight.to(x.dtype)
        low_bias = None if bias is None else bias.to(x.dtype)
        ctx.save_for_backward(x, low_weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        transposed, output_padding = False, [0] * len(stride)
        return aten.convolution(x, low_weight, low_bias, stride, padding, dilation, transposed,
                                output_padding, groups)

    @staticmethod
    def backward(ctx, grad):
        x, low_weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        arguments = (stride, padding, dilation, False, [0] * len(stride), groups)
        grad_input = None
        if ctx.needs_input_grad[0]:  # bfloat16, as autocast computes it: fast on AMX
            grad_input = aten.convolution_backward(grad, x, low_weight, None, *arguments,
                                                   [True, False, False])[0]
        grad_weight = grad_bias = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            wide_grad = grad.float()
            grad_weight, grad_bias = aten.convolution_backward(
                wide_grad, x.float(), low_weight.float(), [low_weight.shape[0]] if ctx.has_bias else None,
                *arguments, [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]])[1:]
        return grad_input, grad_weight, grad_bias, None, None, None, None


def _uses_cpu_bfloat16(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_grad_enabled())


class _Float32WeightGradient:
    """The forward of a convolution module, routed through _Convolution under CPU bfloat16
    autocast (mixed into nn.Conv2d and nn.Conv3d below)."""

    def _conv_forward(self, x, weight, bias):
        if not _uses_cpu_bfloat16(x) or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(x, weight, bias)
        with torch.autocast("cpu", enabled=False):
            return _Convolution.apply(x.to(torch.bfloat16), weight, bias, list(self.stride),
                                      list(self.padding), list(self.dilation), self.groups)


class Conv2d(_Float32WeightGradient, nn.Conv2d):
    pass


class Conv3d(_Float32WeightGradient, nn.Conv3d):
    pass


def use_float32_weight_gradients(network: nn.Module) -> int:
    """Makes every nn.Conv2d and nn.Conv3d of the network compute its weight gradient in float32
    under CPU bfloat16 autocast; returns how many modules changed."""
    replacements = {nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}
    changed = 0
    for module in network.modules():
        if type(module) in replacements:
            module.__class__ = replacements[type(module)]
            changed += 1
    return changed
