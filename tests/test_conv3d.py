"""vs_iedvr.conv3d.Conv3d: the same values and gradients as torch's 3D convolution, and a
training step of the size that crashed oneDNN's bfloat16 weight gradient runs to the end."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vs_iedvr.conv3d import Conv3d

# The fusion block's five shapes: pointwise, 3x3x3, temporal (3x1x1) and depth-wise.
SHAPES = [
    dict(in_channels=8, out_channels=4, kernel_size=1),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1),
    dict(in_channels=4, out_channels=8, kernel_size=1),
    dict(in_channels=8, out_channels=8, kernel_size=(3, 1, 1)),
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=(0, 1, 1), groups=8),
]


def gradients(module, x, reference: bool, autocast: bool):
    """Output and the gradients of (input, weight, bias) of a random linear function of it;
    `reference` computes with torch's F.conv3d on the same parameters."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if reference:
            out = F.conv3d(x, module.weight, module.bias, module.stride, module.padding,
                           module.dilation, module.groups)
        else:
            out = module(x)
    torch.manual_seed(1)
    (out.float() * torch.randn(out.shape)).sum().backward()
    grads = [x.grad, module.weight.grad, module.bias.grad]
    module.zero_grad(set_to_none=True)
    return [out.detach()] + grads


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"k{s['kernel_size']}g{s.get('groups', 1)}")
def test_values_and_gradients_match_torch_in_float64(shape):
    torch.manual_seed(0)
    module = Conv3d(**shape).double().train()
    x = torch.randn(2, shape["in_channels"], 3, 6, 7, dtype=torch.float64)
    ours = gradients(module, x, reference=False, autocast=False)
    theirs = gradients(module, x, reference=True, autocast=False)
    for name, a, b in zip(["output", "input", "weight", "bias"], ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"k{s['kernel_size']}g{s.get('groups', 1)}")
def test_under_bfloat16_autocast_it_matches_a_float64_convolution(shape):
    """The forward and the input's gradient in bfloat16, the weight's gradient from the bfloat16
    tensors summed in float32: within bfloat16's rounding of a float64 oracle, and the
    parameters' gradients stay float32 as the optimiser expects."""
    torch.manual_seed(0)
    module = Conv3d(**shape).train()
    x = torch.randn(2, shape["in_channels"], 3, 16, 16).contiguous(
        memory_format=torch.channels_last_3d)
    ours = gradients(module, x, reference=False, autocast=True)
    reference = Conv3d(**shape).double()
    reference.load_state_dict(module.state_dict())
    theirs = gradients(reference, x.double(), reference=True, autocast=False)
    assert ours[2].dtype == ours[3].dtype == torch.float32
    for name, a, b in zip(["output", "input", "weight", "bias"], ours, theirs):
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() < 0.02 * scale, name


def test_evaluated_it_is_a_plain_convolution_for_tracing():
    module = Conv3d(4, 4, 3, padding=1).eval()
    x = torch.randn(1, 4, 3, 8, 8)
    graph = torch.jit.trace(module, x).inlined_graph
    assert "aten::_convolution" in str(graph)
    assert not [n for n in graph.nodes() if "PythonOp" in n.kind()]


CRASH = """
import torch
from vs_iedvr.conv3d import Conv3d
torch.set_num_threads(1)
torch.manual_seed(0)
conv = Conv3d(32, 32, 3, padding=1).to(memory_format=torch.channels_last_3d).train()
x = torch.randn(8, 32, 3, 96, 96).contiguous(memory_format=torch.channels_last_3d)
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    out.float().square().mean().backward()
print("finished", float(conv.weight.grad.abs().sum()))
"""


def test_a_bfloat16_training_step_that_crashed_onednn_on_one_thread_finishes(tmp_path):
    """With torch's nn.Conv3d in its place this process dies of a corrupted heap on a CPU with
    AMX (oneDNN 3.12's brgconv_bwd_w); elsewhere it passes either way."""
    result = subprocess.run([sys.executable, "-c", CRASH], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("finished")
