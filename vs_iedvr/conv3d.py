"""A 3D convolution whose weight gradient on the CPU is computed in float32.

oneDNN 3.12's bfloat16 weight-gradient kernel for 3D convolutions on AMX (brgconv_bwd_w, torch
2.14) writes past its buffers from some size on (a batch of 8 at 32 channels: from 96x96 pixels
on one thread, 160x160 on two; a 1x1x1 one from 56x56 on one thread) and the training step dies
with a corrupted heap. Training takes one thread when it shares the cores (training/threads.py),
and 60x60 patches then crashed. The float32 kernel is a different one, and these convolutions
are a few percent of a step: the forward and the input's gradient stay in bfloat16. Evaluated
(the traced and exported network) or on a GPU it is a plain convolution."""

import torch
import torch.nn.functional as F
from torch import nn


class _Float32WeightGradientConvolution(torch.autograd.Function):
    # Its autograd node, _Float32WeightGradientConvolutionBackward, names a convolution's
    # backward as torch's own do (vs-iedvr-train profile counts it with them).
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        # Under autocast the convolution runs in its low precision; cast here, once, so that
        # the backward sees the tensors the forward computed with.
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            output = F.conv3d(x, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None

        def convolution_backward(grad, inp, w, mask):
            return torch.ops.aten.convolution_backward(
                grad, inp, w, None, stride, padding, dilation, False, [0, 0, 0], groups, mask)

        if needs_input:
            grad_input = convolution_backward(grad_output, x, weight, [True, False, False])[0]
        wide = torch.promote_types(x.dtype, torch.float32)
        if needs_weight:
            grad_weight = convolution_backward(grad_output.to(wide), x.to(wide), weight.to(wide),
                                               [False, True, False])[1]
        if needs_bias:  # False without a bias
            grad_bias = grad_output.sum((0, 2, 3, 4), dtype=wide)
        return grad_input, grad_weight, grad_bias, None, None, None, None


class Conv3d(nn.Conv3d):
    """nn.Conv3d (the same parameters and state dict) that trains on the CPU with its weight
    gradient in float32: see the module's docstring."""

    def forward(self, x):
        if not (self.training and torch.is_grad_enabled() and x.device.type == "cpu"):
            return super().forward(x)
        if self.padding_mode != "zeros":
            raise NotImplementedError("vs_iedvr.conv3d.Conv3d trains with zero padding only")
        return _Float32WeightGradientConvolution.apply(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
