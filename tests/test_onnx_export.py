"""ONNX export for vs-mlrt: each form of the deformable convolution against independent
implementations (onnx's reference evaluator for the standard DeformConv, OpenVINO for its own op),
whole networks against PyTorch, and vs-mlrt's OpenVINO backend in a VapourSynth graph against
core.iedvr.Upscale, borders and scene cuts included."""

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import vs_iedvr
from small_network import SMALL, export_small_network
from vs_iedvr import model_file, onnx_export, weights_file
from vs_iedvr.network import IEDVR
from vs_iedvr.ops import modulated_deform_conv2d

onnx = pytest.importorskip("onnx")

# onnx's reference DeformConv resamples the input once per (output channel, input channel) pair,
# so its time grows with their product: the small network with 4 features instead of 16.
TINY = replace(SMALL, num_feat=4, deformable_groups=2, rigid_widths=(4,))
# Float32 in OpenVINO: on CPUs with AVX512-BF16 or AMX its default is bfloat16.
OPENVINO_FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32"}


def with_offsets(config, seed=0) -> IEDVR:
    """A network whose deformable convolutions get offsets of a few pixels and varied masks:
    freshly initialised ones predict zero offsets, where every form samples alike."""
    torch.manual_seed(seed)
    net = IEDVR(config).eval()
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, "conv_offset"):
                module.conv_offset.weight.normal_(0, 0.3)
                module.conv_offset.bias.normal_(0, 1.5)
    return net


def network_output(net, stacked: torch.Tensor) -> np.ndarray:
    """The model file's wrapper (replicate padding to a multiple of 4) on the frames of `stacked`."""
    frames = stacked.unflatten(1, (net.config.num_frame, 3))
    with torch.no_grad():
        return model_file.PaddedNetwork(net)(frames).numpy()


OPENVINO_RUN = """
import sys
import numpy as np
import openvino
core = openvino.Core()
compiled = core.compile_model(core.read_model(sys.argv[1]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
np.save(sys.argv[3], compiled(dict(np.load(sys.argv[2])))[0])
"""


def openvino_run(path, inputs: dict) -> np.ndarray:
    """OpenVINO's Python runtime on `path`, in float32 (on CPUs with AVX512-BF16 or AMX its
    default is bfloat16). In a process of its own: once VapourSynth has loaded vs-mlrt's plugin,
    which brings its own build of OpenVINO's libraries, the Python package refuses to load."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("OpenVINO's Python runtime is not installed (pip install openvino)")
    folder = Path(path).parent
    np.savez(folder / "inputs.npz", **inputs)
    run = subprocess.run([sys.executable, "-c", OPENVINO_RUN, str(path), str(folder / "inputs.npz"),
                          str(folder / "output.npy")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return np.load(folder / "output.npy")


class DeformConv(nn.Module):
    def __init__(self, weight, bias, deformable_groups):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.deformable_groups = deformable_groups

    def forward(self, x, offset, mask):
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, padding=1,
                                       deformable_groups=self.deformable_groups)


def export_deform_conv(module, inputs, path, target):
    """One deformable convolution through the exporter's symbolic for `target`."""
    path.write_bytes(onnx_export.trace_to_onnx(module, inputs, target, ["x", "offset", "mask"], ["y"]))


@pytest.mark.parametrize("offset_scale", [0.4, 3.0, "integer"])
@pytest.mark.parametrize("target", ["tensorrt", "openvino"])
def test_deform_conv_forms_equal_the_operator(tmp_path, target, offset_scale):
    # Offsets of several pixels send samples past every edge of the 6x7 input, where the three
    # implementations' border rules have to agree; integer offsets hit the edges exactly.
    generator = torch.Generator().manual_seed(1)
    groups, height, width = 2, 6, 7
    x = torch.rand(1, 8, height, width, generator=generator)
    shape = (1, 2 * groups * 9, height, width)
    offset = (torch.randint(-3, 4, shape, generator=generator).float() if offset_scale == "integer"
              else torch.randn(shape, generator=generator) * offset_scale)
    mask = torch.rand(1, groups * 9, height, width, generator=generator)
    module = DeformConv(torch.randn(4, 8, 3, 3, generator=generator),
                        torch.randn(4, generator=generator), groups)
    path = tmp_path / f"dcn-{target}.onnx"
    export_deform_conv(module, (x, offset, mask), path, target)
    inputs = {"x": x.numpy(), "offset": offset.numpy(), "mask": mask.numpy()}
    expected = module(x, offset, mask).detach().numpy()

    model = onnx.load(str(path))
    ops = {(node.domain, node.op_type) for node in model.graph.node}
    if target == "tensorrt":
        assert ("", "DeformConv") in ops
        from onnx.reference import ReferenceEvaluator

        result = ReferenceEvaluator(model).run(None, inputs)[0]
    else:
        assert (onnx_export.OPENVINO_DOMAIN, "DeformableConv2D") in ops and ("", "DeformConv") not in ops
        result = openvino_run(path, inputs)
    np.testing.assert_allclose(result, expected, rtol=0, atol=2e-5)


def test_tensorrt_form_equals_the_network(tmp_path):
    net = with_offsets(TINY)
    path = tmp_path / "tiny-tensorrt.onnx"
    onnx_export.export_onnx(net, path, "tensorrt", "tiny")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {n.op_type for n in model.graph.node} >= {"DeformConv", "Pad"}
    assert all(n.domain == "" for n in model.graph.node)
    from onnx.reference import ReferenceEvaluator

    # 6 rows are padded to 8 inside the graph (the pyramid's coarsest level needs 2 rows for the
    # reference evaluator's sampling, which divides by height - 1).
    stacked = torch.rand(1, 3 * TINY.num_frame, 6, 8, generator=torch.Generator().manual_seed(2))
    result = ReferenceEvaluator(model).run(None, {"input": stacked.numpy()})[0]
    assert result.shape == (1, 3, 24, 32)
    np.testing.assert_allclose(result, network_output(net, stacked), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def small_with_offsets():
    return with_offsets(SMALL, seed=3)


@pytest.mark.parametrize("height, width", [(12, 16), (10, 13), (17, 6)])
def test_openvino_form_takes_any_size(tmp_path_factory, small_with_offsets, height, width):
    path = tmp_path_factory.getbasetemp() / "small-openvino.onnx"
    if not path.exists():
        onnx_export.export_onnx(small_with_offsets, path, "openvino", "small")
    stacked = torch.rand(1, 15, height, width, generator=torch.Generator().manual_seed(height))
    result = openvino_run(path, {"input": stacked.numpy()})
    assert result.shape == (1, 3, 4 * height, 4 * width)
    np.testing.assert_allclose(result, network_output(small_with_offsets, stacked), rtol=0, atol=2e-5)


def test_fixed_size_and_float16_weights(tmp_path, small_with_offsets):
    path = tmp_path / "small-fixed.onnx"
    metadata = onnx_export.export_onnx(small_with_offsets, path, "openvino", "small", size=(11, 9),
                                       weights_dtype="float16")
    model = onnx.load(str(path))
    dims = [[d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (model.graph.input[0], model.graph.output[0])]
    assert dims == [[1, 15, 9, 11], [1, 3, 36, 44]]
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert metadata["weights_dtype"] == "float16" and metadata["input"]["size"] == "11x9"

    # The oracle: the network with its weights rounded to float16, computing in float32.
    rounded = with_offsets(SMALL, seed=3)
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.half().float())
    stacked = torch.rand(1, 15, 9, 11, generator=torch.Generator().manual_seed(4))
    result = openvino_run(path, {"input": stacked.numpy()})
    # Tight enough to tell the rounded weights from the original ones (1.5e-5 apart here).
    np.testing.assert_allclose(result, network_output(rounded, stacked), rtol=0, atol=3e-6)
    assert np.abs(result - network_output(small_with_offsets, stacked)).max() > 5e-6


# The command runs in this process (run_here, conftest.py): its process entry point is tested in
# test_cli_errors.py.

def test_cli_exports_a_model_file(tmp_path, run_here):
    net = export_small_network(tmp_path / "small.pt", "iedvr-small", {"source": "test weights"})
    run = run_here("vs_iedvr", "export", "--format", "onnx", "--target", "openvino", "--from-model",
                   tmp_path / "small.pt", "--output", tmp_path / "small.onnx")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "small.onnx: iedvr-small x4 for openvino, input [1, 15, H, W] (dynamic)" in run.stdout
    metadata = onnx_export.read_onnx_metadata(tmp_path / "small.onnx")
    assert metadata["weights"] == {"source": "test weights"} and metadata["num_frames"] == 5
    assert metadata["config"] == json.loads(json.dumps(SMALL.to_dict()))

    stacked = torch.rand(1, 15, 14, 18, generator=torch.Generator().manual_seed(5))
    result = openvino_run(tmp_path / "small.onnx", {"input": stacked.numpy()})
    np.testing.assert_allclose(result, network_output(net, stacked), rtol=0, atol=2e-5)


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx"], "--format onnx needs --target"),
    (["--target", "tensorrt"], "--target and --size are for --format onnx"),
    (["--from-model", "default.pt", "--arch", "edvr-m"], "leave out --arch, --scale and --weights"),
])
def test_cli_refuses_contradictory_arguments(tmp_path, run_here, args, message):
    run = run_here("vs_iedvr", "export", *args, "--output", tmp_path / "x.onnx")
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "x.onnx").exists()


# vs-mlrt in a VapourSynth graph against the plugin.

vs = pytest.importorskip("vapoursynth")
core = vs.core
needs_vs_mlrt = pytest.mark.skipif(not hasattr(core, "ov"),
                                   reason="vs-mlrt's OpenVINO backend is not installed "
                                   "(pip install vapoursynth-mlrt-ov)")


def make_clip(length, height, width, cuts=()):
    """Random RGBS frames whose props say their number; frames in `cuts` start a new scene."""
    rng = np.random.default_rng(length)
    data = rng.random((length, 3, height, width), dtype=np.float32)
    blank = core.std.BlankClip(format=vs.RGBS, width=width, height=height, length=length)

    def fill(n, f):
        out = f.copy()
        for plane in range(3):
            np.asarray(out[plane])[:] = data[n, plane]
        out.props["SourceFrame"] = n
        if n in cuts:
            out.props["_SceneChangePrev"] = 1
        return out

    return core.std.ModifyFrame(blank, blank, fill)


@pytest.fixture(scope="module")
def shipped_exports(tmp_path_factory):
    """The shipped weights, as the model file and as ONNX for OpenVINO. Trained weights: each
    neighbour changes the output by up to 0.1 here, where an untrained network's output barely
    depends on them, so a wrong neighbour would pass unseen."""
    model = Path(vs_iedvr.__file__).parent / "models" / "default.pt"
    if not model.is_file():
        pytest.skip("no shipped weights installed")
    network_path = tmp_path_factory.mktemp("mlrt") / "default.onnx"
    net, metadata = weights_file.network_from_model_file(model)
    onnx_export.export_onnx(net, network_path, "openvino", metadata["architecture"])
    return model, network_path


@needs_vs_mlrt
@pytest.mark.parametrize("length, cuts, border", [(7, (4,), "reflect"), (8, (2, 3), "replicate"),
                                                  (3, (), "reflect")])
def test_vs_mlrt_matches_the_plugin(shipped_exports, length, cuts, border):
    # Every frame, first and last included: their windows reach past the clip's ends and, with
    # cuts, past a scene change (frames 2 and 3 starting scenes make frame 2 a one-frame shot).
    # A 3-frame clip is shorter than the window, which then folds more than once.
    from vs_iedvr import mlrt

    model, network = shipped_exports
    clip = make_clip(length, 14, 18, cuts)
    expected = core.iedvr.Upscale(clip, model=str(model), device_index=-1, fp16=0, border=border)
    result = mlrt.upscale(clip, network, border=border, config=lambda: OPENVINO_FLOAT32)
    assert (result.format.id, result.width, result.height, result.num_frames) == (vs.RGBS, 72, 56, length)
    for n in range(length):
        ours, theirs = expected.get_frame(n), result.get_frame(n)
        for plane in range(3):
            np.testing.assert_allclose(np.asarray(theirs[plane]), np.asarray(ours[plane]),
                                       rtol=0, atol=5e-5, err_msg=f"frame {n} plane {plane}")
        assert theirs.props["SourceFrame"] == n  # frame n's properties, as the plugin keeps


@needs_vs_mlrt
def test_vs_mlrt_helper_names_bad_arguments(shipped_exports):
    from vs_iedvr import mlrt

    _, network = shipped_exports
    clip = make_clip(3, 8, 8)
    cases = [({"clip": core.resize.Point(clip, format=vs.RGB24)}, "clip must be RGBS"),
             ({"network_path": network.with_name("missing.onnx")}, "network_path .* is not a file"),
             ({"backend": "ort"}, "backend must be one of ov, trt"),
             ({"num_frames": 4}, "num_frames must be an odd int"),
             ({"border": "mirror"}, "border must be one of reflect, replicate"),
             ({"scene_change": 2}, "scene_change must be a bool or 0/1")]
    for changed, message in cases:
        arguments = {"clip": clip, "network_path": network, **changed}
        with pytest.raises(vs.Error, match=f"^vs_iedvr.mlrt.upscale: {message}"):
            mlrt.upscale(**arguments)
