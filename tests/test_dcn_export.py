"""The operator inside a traced, exported and compiled module; the traced file runs in a fresh
process that loads only the compiled library, as the C++ plugin will."""

import subprocess
import sys
import warnings

import torch
from torch import nn

import vs_iedvr.ops


class DeformableBlock(nn.Module):
    """A DCNv2 layer as EDVR uses it: a convolution predicts offsets and mask from the features."""

    def __init__(self, channels=8, deformable_groups=4):
        super().__init__()
        self.deformable_groups = deformable_groups
        taps = 9
        self.conv_offset = nn.Conv2d(channels, 3 * deformable_groups * taps, 3, padding=1)
        nn.init.normal_(self.conv_offset.weight, std=0.2)
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(channels))

    def forward(self, x):
        offset_y_x, mask_logits = self.conv_offset(x).split(
            [2 * self.deformable_groups * 9, self.deformable_groups * 9], dim=1)
        return vs_iedvr.modulated_deform_conv2d(
            x, offset_y_x * 3, torch.sigmoid(mask_logits), self.weight, self.bias, padding=1,
            deformable_groups=self.deformable_groups)


FRESH_PROCESS = """
import sys, torch
torch.ops.load_library(sys.argv[1])
model = torch.jit.load(sys.argv[2])
inputs, expected = torch.load(sys.argv[3])
with torch.inference_mode():
    for x, e in zip(inputs, expected):
        torch.testing.assert_close(model(x), e, rtol=1e-5, atol=1e-5)
assert not [m for m in sys.modules if m.startswith("vs_iedvr")], "vs_iedvr was imported"
print("ok", len(inputs))
"""


def test_traced_module_runs_in_fresh_process_with_only_the_library(tmp_path):
    torch.manual_seed(0)
    block = DeformableBlock().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated in torch >= 2.14
        traced = torch.jit.trace(block, torch.randn(1, 8, 16, 16))
    traced.save(tmp_path / "block.pt")
    inputs = [torch.randn(1, 8, 16, 16), torch.randn(2, 8, 13, 21)]
    with torch.no_grad():
        expected = [block(x) for x in inputs]
    torch.save((inputs, expected), tmp_path / "data.pt")
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(vs_iedvr.ops.LIBRARY_PATH),
         str(tmp_path / "block.pt"), str(tmp_path / "data.pt")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok 2"


def test_torch_export_with_dynamic_size():
    torch.manual_seed(0)
    block = DeformableBlock().eval()
    height, width = torch.export.Dim("height", min=4, max=64), torch.export.Dim("width", min=4, max=64)
    exported = torch.export.export(block, (torch.randn(1, 8, 16, 16),),
                                   dynamic_shapes={"x": {2: height, 3: width}})
    assert any("iedvr.modulated_deform_conv2d" in str(node.target)
               for node in exported.graph.nodes)
    x = torch.randn(1, 8, 11, 19)
    torch.testing.assert_close(exported.module()(x), block(x))


def test_torch_compile_forward_and_backward():
    torch.manual_seed(0)
    block = DeformableBlock()
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 8, 10, 12, requires_grad=True)
    out = compiled(x)
    out.square().sum().backward()
    compiled_grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad()
    expected = block(x)
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected)
    for got, want in zip(compiled_grads, [x.grad] + [p.grad for p in block.parameters()]):
        torch.testing.assert_close(got, want)
