"""The CPU engine's graph rewrite (csrc/engine/cpu_fusion.h): every 2D convolution whose output
goes only to a LeakyReLU runs as one oneDNN convolution with the LeakyReLU fused in; the frames
stay those of the eager network, and IEDVR_CPU_FUSION=0 turns the rewrite off."""

import numpy as np
import pytest
import torch

from engine_library import Engine
from small_network import export_small_network
from vs_iedvr import model_file

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="this torch has no oneDNN")


@pytest.fixture(scope="module")
def network_and_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fusion") / "small.pt"
    return export_small_network(path), path


def convolution_leaky_relu_pairs(model_path) -> int:
    """Counted in Python on the frozen graphs of the methods the engine runs: 2D convolutions
    whose one use is an in-place LeakyReLU."""
    frozen = torch.jit.freeze(torch.jit.load(str(model_path)).eval(),
                              preserved_attrs=["features", "upscale"])
    pairs = 0
    for method in ("features", "upscale"):
        for node in getattr(frozen, method).graph.nodes():
            if node.kind() != "aten::_convolution":
                continue
            weight = node.inputsAt(1).toIValue()
            uses = node.output().uses()
            if (weight is not None and weight.dim() == 4 and len(uses) == 1
                    and uses[0].user.kind() == "aten::leaky_relu_"):
                pairs += 1
    return pairs


def window(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((5, 3, 12, 20), dtype=np.float32)


def test_every_convolution_leaky_relu_pair_is_fused(network_and_model):
    _, path = network_and_model
    pairs = convolution_leaky_relu_pairs(path)
    assert pairs > 10
    assert Engine(path).info().fused_convolutions == pairs


def fused_convolution_runs(dtype: torch.dtype) -> bool:
    """Whether this process's oneDNN runs the fused convolution in dtype, asked as the engine asks
    (it tries the fused model and keeps the plain one if that fails): oneDNN's bfloat16
    convolution needs AVX512-BW/VL/DQ or AVX-NE-CONVERT, which AVX2-only CPUs lack (and
    ONEDNN_MAX_CPU_ISA=AVX2 hides)."""
    x = torch.rand(1, 4, 8, 8, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.rand(4, 4, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
    try:
        torch.ops.mkldnn._convolution_pointwise(x, w, None, [1, 1], [1, 1], [1, 1], 1,
                                                "leaky_relu", [0.1], None)
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("precision, dtype, atol", [(0, torch.float32, 1e-5),
                                                     (1, torch.bfloat16, 3e-2)])
def test_fused_frames_equal_the_eager_network(network_and_model, precision, dtype, atol):
    # Fused where this CPU's oneDNN runs the fused convolution in the engine's dtype, the plain
    # graph elsewhere: the frames are the eager network's either way.
    net, path = network_and_model
    frames = window(0)
    with torch.no_grad():
        eager = model_file.PaddedNetwork(net)(torch.from_numpy(frames)[None])[0].numpy()
    engine = Engine(path, precision=precision)
    assert (engine.info().fused_convolutions > 0) == fused_convolution_runs(dtype)
    np.testing.assert_allclose(engine.run(frames, [0, 1, 2, 3, 4]), eager, atol=atol)


def test_fusion_can_be_turned_off(network_and_model, monkeypatch):
    _, path = network_and_model
    fused = Engine(path).run(window(1), [0, 1, 2, 3, 4])
    monkeypatch.setenv("IEDVR_CPU_FUSION", "0")
    plain = Engine(path)
    assert plain.info().fused_convolutions == 0
    np.testing.assert_allclose(plain.run(window(1), [0, 1, 2, 3, 4]), fused, atol=1e-5)
