"""The network: parameter counts, shapes through each module, ablation switches, BasicSR
checkpoints, and that a short optimisation lowers the Charbonnier loss."""

import pytest
import torch
import torch.nn.functional as F

from vs_iedvr import edvr_blocks, iedvr_blocks, model_file, weights_file
from vs_iedvr.training.loss import charbonnier_loss
from vs_iedvr.network import IEDVR, NetworkConfig, build, count_parameters

PAPER_PARAMETERS = 3_468_295  # the improved EDVR, the paper's Table 3


def test_edvr_parameter_counts_match_basicsr():
    assert count_parameters(build("edvr-m")) == 3_300_131
    assert count_parameters(build("edvr-l")) == 20_633_827


def test_iedvr_m_parameter_count_within_5_percent_of_the_paper():
    count = count_parameters(build("iedvr-m"))
    assert abs(count - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.05, count


def basicsr_edvr_m_shapes() -> dict[str, tuple]:
    """The parameter names and shapes of BasicSR's EDVR-M checkpoint (EDVR_M_x4_SR_REDS),
    written out from its architecture, independently of vs_iedvr's modules."""
    shapes = {}

    def conv(name, cout, cin, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def dcn(name):
        shapes[f"{name}.weight"] = (64, 64, 3, 3)
        shapes[f"{name}.bias"] = (64,)
        conv(f"{name}.conv_offset", 8 * 3 * 9, 64, 3)

    conv("conv_first", 64, 3, 3)
    for i in range(5):
        conv(f"feature_extraction.{i}.conv1", 64, 64, 3)
        conv(f"feature_extraction.{i}.conv2", 64, 64, 3)
    for name in ("conv_l2_1", "conv_l2_2", "conv_l3_1", "conv_l3_2"):
        conv(name, 64, 64, 3)
    for level in ("l3", "l2", "l1"):
        conv(f"pcd_align.offset_conv1.{level}", 64, 128, 3)
        conv(f"pcd_align.offset_conv2.{level}", 64, 64 if level == "l3" else 128, 3)
        if level != "l3":
            conv(f"pcd_align.offset_conv3.{level}", 64, 64, 3)
            conv(f"pcd_align.feat_conv.{level}", 64, 128, 3)
        dcn(f"pcd_align.dcn_pack.{level}")
    conv("pcd_align.cas_offset_conv1", 64, 128, 3)
    conv("pcd_align.cas_offset_conv2", 64, 64, 3)
    dcn("pcd_align.cas_dcnpack")
    for name, cin, k in [("temporal_attn1", 64, 3), ("temporal_attn2", 64, 3),
                         ("feat_fusion", 320, 1), ("spatial_attn1", 320, 1),
                         ("spatial_attn2", 128, 1), ("spatial_attn3", 64, 3),
                         ("spatial_attn4", 64, 1), ("spatial_attn5", 64, 3),
                         ("spatial_attn_l1", 64, 1), ("spatial_attn_l2", 128, 3),
                         ("spatial_attn_l3", 64, 3), ("spatial_attn_add1", 64, 1),
                         ("spatial_attn_add2", 64, 1)]:
        conv(f"fusion.{name}", 64, cin, k)
    for i in range(10):
        conv(f"reconstruction.{i}.conv1", 64, 64, 3)
        conv(f"reconstruction.{i}.conv2", 64, 64, 3)
    conv("upconv1", 256, 64, 3)
    conv("upconv2", 256, 64, 3)
    conv("conv_hr", 64, 64, 3)
    conv("conv_last", 3, 64, 3)
    return shapes


def test_basicsr_edvr_m_checkpoint_loads_strictly(tmp_path):
    shapes = basicsr_edvr_m_shapes()
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 3_300_131
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=generator) * 0.01 for name, shape in shapes.items()}
    torch.save({"params": state}, tmp_path / "EDVR_M.pth")
    net = build("edvr-m")
    provenance = weights_file.load_weights(net, tmp_path / "EDVR_M.pth")
    assert provenance["state_dict_key"] == "params"
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, state[name])
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 5, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_wrong_checkpoint_is_rejected(tmp_path):
    torch.save({"params": {"conv_first.weight": torch.zeros(64, 3, 3, 3)}}, tmp_path / "bad.pth")
    with pytest.raises(model_file.ModelFileError, match=r"bad.pth: its weights do not fit the "
                       r"network: tensors \d+ missing \(such as conv_first.bias\)"):
        weights_file.load_weights(build("edvr-m"), tmp_path / "bad.pth")


def test_module_shapes():
    x = torch.rand(2, 3, 12, 16)
    assert iedvr_blocks.RigidConvBlock(3, 16)(x).shape == (2, 16, 12, 16)
    assert iedvr_blocks.RigidConvBlock(16, 16)(torch.rand(2, 16, 12, 16)).shape == (2, 16, 12, 16)
    pre = iedvr_blocks.FeaturePreprocessing(3, (16, 32, 64), num_keep=1, num_enhance=2)
    assert pre(x).shape == (2, 64, 12, 16)
    aligned = torch.rand(2, 5, 32, 8, 12)
    assert iedvr_blocks.Temporal3DFusionBlock(32, 5)(aligned).shape == (2, 32, 8, 12)
    assert iedvr_blocks.Temporal3DFusion(32, 5, 3)(aligned).shape == (2, 32, 8, 12)
    assert edvr_blocks.TSAFusion(32, 5, 2)(aligned).shape == (2, 32, 8, 12)
    features = torch.rand(2, 32, 8, 12)
    assert iedvr_blocks.ChannelAttentionBlock(32, 4)(features).shape == features.shape
    levels = [torch.rand(2, 32, 8, 12), torch.rand(2, 32, 4, 6), torch.rand(2, 32, 2, 3)]
    assert edvr_blocks.PCDAlignment(32, 4)(levels, levels).shape == (2, 32, 8, 12)


def test_channel_attention_against_its_formula():
    torch.manual_seed(0)
    attention = iedvr_blocks.ChannelAttention(8, 2)
    x = torch.randn(3, 8, 5, 6)
    stats = torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)
    hidden = F.leaky_relu(stats @ attention.squeeze.weight.T + attention.squeeze.bias, 0.1)
    weights = torch.sigmoid(hidden @ attention.restore.weight.T + attention.restore.bias)
    torch.testing.assert_close(attention(x), x * weights[:, :, None, None])


def test_fusion_front_and_rear_share_weights():
    # With the depth-wise combination made symmetric, reversing time must not change the result:
    # only true if front and rear go through the same weights.
    torch.manual_seed(0)
    block = iedvr_blocks.Temporal3DFusionBlock(16, 5)
    with torch.no_grad():
        block.combine.weight.copy_((block.combine.weight + block.combine.weight.flip(2)) / 2)
    aligned = torch.randn(1, 5, 16, 6, 7)
    torch.testing.assert_close(block(aligned), block(aligned.flip(1)))


TINY = dict(num_feat=16, deformable_groups=4, rigid_widths=(8, 16), num_rigid_keep=1,
            num_enhance_block=1, num_extract_block=1, num_reconstruct_block=2)

VARIANTS = {
    "iedvr": {},
    "x2": {"scale": 2},
    "no_preprocessing": {"preprocessing": "none"},
    "edvr_extraction": {"preprocessing": "edvr"},
    "tsa_fusion": {"fusion": "tsa"},
    "one_fusion_block": {"num_fusion_block": 1},
    "residual_reconstruction": {"reconstruction": "rb"},
    "edvr": {"preprocessing": "edvr", "fusion": "tsa", "reconstruction": "rb"},
}


@pytest.mark.parametrize("name", VARIANTS)
def test_output_shape_for_each_variant(name):
    net = IEDVR(NetworkConfig(**TINY, **VARIANTS[name])).eval()
    scale = net.config.scale
    with torch.no_grad():
        assert net(torch.rand(2, 5, 3, 8, 12)).shape == (2, 3, 8 * scale, 12 * scale)


def tiny_clip(scale, generator):
    """Five low-resolution frames of a smooth moving pattern and the high-resolution centre."""
    size = 12 * scale
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    phase = torch.rand(3, 1, 1, generator=generator) * 6
    frames = [0.5 + 0.4 * torch.sin(7 * (x + 0.03 * t) + 5 * y + phase) for t in range(5)]
    high = torch.stack(frames)  # [5, 3, size, size]
    low = F.interpolate(high, scale_factor=1 / scale, mode="area")
    return low, high[2]


@pytest.fixture
def one_thread():
    """torch on one thread for the test. A tiny network's operations are too small to split: on two
    threads a step hands work to the other thread and waits for it hundreds of times, which made
    it 3.5 times slower on this 2-core machine (0.69 s a step against 0.20)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", VARIANTS)
def test_short_optimisation_lowers_charbonnier_loss(name, one_thread):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    net = IEDVR(NetworkConfig(**TINY, **VARIANTS[name]))
    scale = net.config.scale
    clips = [tiny_clip(scale, generator) for _ in range(2)]
    low = torch.stack([c[0] for c in clips])
    high = torch.stack([c[1] for c in clips])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.99))
    losses = []
    for _ in range(30):
        loss = charbonnier_loss(net(low), high)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_charbonnier_loss_values():
    x = torch.tensor([0.0, 3.0])
    y = torch.tensor([0.0, -1.0])
    expected = (1e-3 + (16 + 1e-6) ** 0.5) / 2
    assert charbonnier_loss(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_bad_input_shapes_are_explained():
    net = build("iedvr-m")
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.rand(1, 5, 3, 10, 12))
    with pytest.raises(ValueError, match=r"\[batch, 5, 3, height, width\]"):
        net(torch.rand(1, 3, 3, 8, 8))


def small_network_with_moving_offsets(name="iedvr-m", layout=torch.contiguous_format):
    torch.manual_seed(0)
    net = build(name, num_feat=16, deformable_groups=4, rigid_widths=(8, 16), num_extract_block=1,
                num_enhance_block=1, num_reconstruct_block=1).double()
    for module in net.modules():  # non-zero offsets: the sampling depends on the offset path
        if isinstance(module, edvr_blocks.DCNv2Pack):
            torch.nn.init.normal_(module.conv_offset.weight, std=0.05)
    for parameter in net.parameters():
        if parameter.dim() == 4:
            parameter.data = parameter.data.contiguous(memory_format=layout)
    return net


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("name", ["iedvr-m", "edvr-m"])
def test_split_alignment_equals_the_concatenating_one(name, layout):
    """The plugin's path (per-frame features with their alignment terms, then the per-window
    half) computes what forward() does; in float64, so that only the algebra is compared, with
    planar and channels-last weights (the layout training uses)."""
    net = small_network_with_moving_offsets(name, layout).eval()
    frames = torch.rand(2, 5, 3, 16, 24, dtype=torch.float64)
    with torch.no_grad():
        per_frame = net.frame_features(frames.flatten(0, 1))
        levels = [f.unflatten(0, (2, 5)) for f in per_frame]
        split = net.reconstruct(*levels[:3], frames[:, 2], levels[3:])
        torch.testing.assert_close(split, net(frames), rtol=1e-10, atol=1e-10)
        assert len(per_frame) == 6 and per_frame[3].shape == per_frame[0].shape


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_alignment_in_one_batch_has_the_values_and_gradients_of_frame_by_frame(layout):
    """Training aligns the window's frames as one batch; in float64 its output and every
    parameter's gradient equal those of one alignment per frame."""
    net = small_network_with_moving_offsets(layout=layout)
    frames = torch.rand(2, 5, 3, 16, 24, dtype=torch.float64)
    results = []
    for align in (net.align_in_one_batch, net.align_frame_by_frame):
        net.align_window = align
        out = net(frames)
        results.append((out.detach(), torch.autograd.grad(out.square().sum(), list(net.parameters()))))
    (batched, batched_grads), (per_frame, per_frame_grads) = results
    torch.testing.assert_close(batched, per_frame, rtol=1e-10, atol=1e-10)
    for (name, _), a, b in zip(net.named_parameters(), batched_grads, per_frame_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


def test_inference_aligns_frame_by_frame_and_training_in_one_batch(monkeypatch):
    """Without gradients (inference, tracing, export) one frame's alignment activations at a
    time; with them, one batch."""
    net = small_network_with_moving_offsets()
    frames = torch.rand(1, 5, 3, 8, 8, dtype=torch.float64)
    calls = []
    for way in ("align_in_one_batch", "align_frame_by_frame"):
        original = getattr(type(net), way)
        monkeypatch.setattr(type(net), way,
                            lambda self, levels, way=way, original=original: calls.append(way) or original(self, levels))
    with torch.no_grad():
        net(frames)
    net(frames)
    assert calls == ["align_frame_by_frame", "align_in_one_batch"]
