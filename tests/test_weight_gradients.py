"""training/weight_gradients.py: the convolutions whose weight gradient is computed in float32
under CPU bfloat16 autocast give the gradients of a float64 oracle at least as closely as
autocast's own, change nothing outside autocast, and leave the state_dict as it was."""

import copy

import pytest
import torch
from torch import nn

from vs_iedvr.network import build
from vs_iedvr.training.loss import charbonnier_loss
from vs_iedvr.training.weight_gradients import use_float32_weight_gradients

TINY_NETWORK = {"num_feat": 16, "deformable_groups": 2, "rigid_widths": (8, 16), "num_rigid_keep": 1,
                "num_enhance_block": 1, "num_fusion_block": 1, "num_reconstruct_block": 1}

CONVOLUTIONS = [
    (nn.Conv2d(16, 8, 3, 2, 1), (2, 16, 12, 12)),  # strided
    (nn.Conv2d(8, 8, 3, 1, 1, groups=8), (2, 8, 12, 12)),  # depthwise
    (nn.Conv2d(8, 4, 1, bias=False), (2, 8, 12, 12)),
    (nn.Conv3d(8, 4, (3, 1, 1)), (2, 8, 5, 12, 12)),
    (nn.Conv3d(8, 8, 3, 1, (0, 1, 1), groups=8), (2, 8, 5, 12, 12)),
]


def relative_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return ((value.double() - truth).norm() / truth.norm()).item()


@pytest.mark.parametrize("conv, shape", CONVOLUTIONS, ids=lambda c: getattr(c, "__name__", None))
def test_each_convolution_matches_float64(conv, shape):
    torch.manual_seed(0)
    fast = copy.deepcopy(conv)
    assert use_float32_weight_gradients(fast) == 1
    x = torch.randn(shape)
    x_stock, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_stock, y_fast = conv(x_stock), fast(x_fast)
    assert y_fast.dtype == torch.bfloat16
    assert torch.equal(y_stock, y_fast)  # the same bfloat16 forward as autocast's
    grad = torch.randn(y_stock.shape)
    y_stock.float().backward(grad)
    y_fast.float().backward(grad)
    # The oracle: the same bfloat16-rounded operands, in float64.
    rounded = lambda t: t.detach().to(torch.bfloat16).double().requires_grad_()
    x64, w64 = rounded(x), rounded(conv.weight)
    b64 = rounded(conv.bias) if conv.bias is not None else None
    function = nn.functional.conv2d if isinstance(conv, nn.Conv2d) else nn.functional.conv3d
    y64 = function(x64, w64, b64, conv.stride, conv.padding, conv.dilation, conv.groups)
    y64.backward(grad.to(torch.bfloat16).double())
    assert fast.weight.grad.dtype == torch.float32
    assert relative_error(fast.weight.grad, w64.grad) < 1e-6  # float32 sums of exact products
    assert relative_error(conv.weight.grad, w64.grad) > 1e-4  # autocast's: rounded to bfloat16
    if b64 is not None:
        assert relative_error(fast.bias.grad, b64.grad) < 1e-6
    assert torch.equal(x_stock.grad, x_fast.grad)  # the input gradient stays autocast's


def test_whole_network_gradient_against_float64():
    torch.manual_seed(0)
    stock = build("iedvr-m", **TINY_NETWORK)
    # Moved off the untrained start (the offset predictors begin at zero) so that every
    # gradient is non-trivial.
    with torch.no_grad():
        for parameter in stock.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    fast, oracle = copy.deepcopy(stock), copy.deepcopy(stock).double()
    assert use_float32_weight_gradients(fast) > 20
    assert list(fast.state_dict()) == list(stock.state_dict())
    low, high = torch.rand(2, 5, 3, 8, 8), torch.rand(2, 3, 32, 32)
    for network in (stock, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = network(low)
        charbonnier_loss(out.float(), high).backward()
    charbonnier_loss(oracle(low.double()), high.double()).backward()
    errors = {}
    for name, network in (("stock", stock), ("fast", fast)):
        grads = torch.cat([p.grad.flatten().double() for p in network.parameters()])
        truth = torch.cat([p.grad.flatten() for p in oracle.parameters()])
        errors[name] = relative_error(grads, truth)
    # bfloat16's forward leaves a few percent; the float32 weight gradients add nothing to it.
    assert errors["fast"] < 0.1, errors
    assert errors["fast"] <= errors["stock"] * 1.01, errors


def test_outside_autocast_it_is_the_plain_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, 1, 1)
    fast = copy.deepcopy(conv)
    use_float32_weight_gradients(fast)
    x = torch.randn(1, 4, 9, 7)
    for module in (conv, fast):
        module(x).square().sum().backward()
    assert torch.equal(conv.weight.grad, fast.weight.grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # inference: autocast's own
        assert torch.equal(conv(x), fast(x))
