"""Every layout of BasicSR's official EDVR models through `vs-iedvr export` and the filter, against
BasicSR's own EDVR (tests/basicsr_oracle.py), and a 7-frame model in every path of the filter
against the eager network on the same windows."""

import subprocess

import numpy as np
import pytest
import torch
import vapoursynth as vs

from basicsr_oracle import basicsr_edvr
from test_plugin import clip_of, expected, planes, smooth_frames
from vs_iedvr import model_file
from vs_iedvr.edvr_checkpoint import edvr_config
from vs_iedvr.network import IEDVR
from vs_iedvr.window import fold

core = vs.core
# BasicSR's arch_util compares versions with distutils' LooseVersion, which warns.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# The official models' layouts (BasicSR's options/test/EDVR/*.yml), at a small feature count.
LAYOUTS = {
    "EDVR_L_x4_SR_Vimeo90K": dict(num_frame=7),
    "EDVR_M_x4_SR_REDS_woTSA": dict(with_tsa=False),
    "EDVR_L_x4_SRblur_REDS": dict(with_predeblur=True),
    "EDVR_L_deblur_REDS": dict(with_predeblur=True, hr_in=True),
}
SMALL = dict(num_feat=16, deformable_groups=4, num_extract_block=2, num_reconstruct_block=2)
# Frames a multiple of 16 in size, as BasicSR requires of hr_in input (and of 4 otherwise).
LENGTH, HEIGHT, WIDTH = 9, 32, 48


def basicsr_network(layout: str) -> torch.nn.Module:
    """BasicSR's EDVR with seeded random weights; its offset convolutions, which start at zero,
    drawn so that the offsets are several pixels."""
    torch.manual_seed(3)
    network = basicsr_edvr().EDVR(**SMALL, **LAYOUTS[layout]).eval()
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "conv_offset.weight" in name:
                parameter.normal_(0, 8.0)
    return network


def offsets_abs_mean(network, frames) -> float:
    """The mean absolute offset of the last deformable convolution (the cascade's), in pixels."""
    seen = []
    handle = network.pcd_align.cas_dcnpack.conv_offset.register_forward_hook(
        lambda module, inputs, output: seen.append(output[:, : 2 * output.shape[1] // 3].abs().mean()))
    with torch.no_grad():
        network(frames)
    handle.remove()
    return float(seen[0])


def export(run_here, checkpoint, output, *arguments) -> subprocess.CompletedProcess:
    """`vs-iedvr export --weights CHECKPOINT --output OUTPUT ...`, run in this process (its process
    entry point is tested in test_cli_errors.py)."""
    return run_here("vs_iedvr", "export", "--weights", checkpoint, "--output", output, *arguments)


@pytest.fixture(scope="module")
def frames():
    return torch.rand(LENGTH, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_basicsr_checkpoints_run_exactly_through_the_filter(layout, frames, tmp_path, run_here):
    reference = basicsr_network(layout)
    num_frame = LAYOUTS[layout].get("num_frame", 5)
    assert offsets_abs_mean(reference, frames[:num_frame][None]) > 2.0
    checkpoint = tmp_path / f"{layout}.pth"
    torch.save({"params": reference.state_dict()}, checkpoint)
    result = export(run_here, checkpoint, tmp_path / "model.pt")  # no --arch: the file says it all
    assert result.returncode == 0, result.stderr
    metadata = model_file.read_metadata(tmp_path / "model.pt")
    scale = 1 if LAYOUTS[layout].get("hr_in") else 4
    assert (metadata["num_frames"], metadata["scale"]) == (num_frame, scale)

    out = core.iedvr.Upscale(clip_of(frames), model=str(tmp_path / "model.pt"), fp16=0,
                             device_index=-1)
    assert (out.width, out.height) == (WIDTH * scale, HEIGHT * scale)
    radius = num_frame // 2
    for n in (0, 1, LENGTH // 2, LENGTH - 1):
        window = [fold(n + k, 0, LENGTH - 1) for k in range(-radius, radius + 1)]
        with torch.no_grad():
            oracle = reference(frames[window][None].clone())[0].numpy()
        np.testing.assert_allclose(planes(out.get_frame(n)), oracle, atol=1e-5, rtol=0)


def test_the_layout_is_read_from_the_file_and_an_arch_that_contradicts_it_is_refused(tmp_path, run_here):
    reference = basicsr_network("EDVR_L_x4_SR_Vimeo90K")
    checkpoint = tmp_path / "vimeo.pth"
    torch.save({"params": reference.state_dict()}, checkpoint)
    config = edvr_config(reference.state_dict())
    assert (config.num_frame, config.fusion, config.num_feat, config.deformable_groups,
            config.num_extract_block, config.num_reconstruct_block) == (7, "tsa", 16, 4, 2, 2)
    assert export(run_here, checkpoint, tmp_path / "a.pt", "--arch", "edvr").returncode == 0
    refused = export(run_here, checkpoint, tmp_path / "b.pt", "--arch", "iedvr-m")
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "iedvr-m" in lines[0] and "edvr" in lines[0], refused.stderr


@pytest.mark.parametrize("change, message", [
    (lambda state: state.pop("fusion.spatial_attn3.weight"), "lacks fusion.spatial_attn3.weight"),
    (lambda state: state.update({"extra.weight": torch.zeros(1)}), "it has extra.weight"),
    (lambda state: state.update({"conv_hr.weight": torch.zeros(64, 64, 1, 1)}),
     "its conv_hr.weight is [64, 64, 1, 1]"),
    (lambda state: state.update({"fusion.feat_fusion.weight": torch.zeros(16, 40, 1, 1)}),
     "its fusion takes 40 channels, not a multiple of its 16 features"),
    (lambda state: state.update({"pcd_align.dcn_pack.l1.conv_offset.weight": torch.zeros(12, 32, 3, 3)}),
     "not 3 x 9 channels per deformable group"),
])
def test_a_checkpoint_of_no_known_layout_is_one_line_naming_the_key(tmp_path, run_here, change, message):
    state = basicsr_network("EDVR_L_x4_SRblur_REDS").state_dict()
    change(state)
    checkpoint = tmp_path / "odd.pth"
    torch.save({"params": state}, checkpoint)
    result = export(run_here, checkpoint, tmp_path / "odd.pt")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert message in lines[0] and str(checkpoint) in lines[0], lines[0]


# -- a 7-frame model in every path of the filter ------------------------------------------------

@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    """A small 7-frame EDVR, eager and as a model file."""
    torch.manual_seed(4)
    network = IEDVR(edvr_config(basicsr_network("EDVR_L_x4_SR_Vimeo90K").state_dict())).eval()
    path = tmp_path_factory.mktemp("seven") / "seven.pt"
    model_file.export_model(network, path, "edvr")
    return network, str(path)


def window_of(n, last, radius, cuts=()):
    """Frame n's window: neighbours past a cut (between c and c + 1) or the clip's ends folded."""
    first = max([c + 1 for c in cuts if c < n] + [0])
    end = min([c for c in cuts if c >= n] + [last])
    return [fold(n + k, max(first, n - radius), min(end, n + radius)) for k in range(-radius, radius + 1)]


@pytest.mark.parametrize("arguments", [
    {},                                           # whole frames, the plan's cache
    {"tilesize": 0},                              # whole frames, given
    {"num_streams": 2},
    {"tilesize": [32, 24], "overlap": [8, 4]},    # tiles, compared with tolerance below
])
def test_a_seven_frame_model_in_every_path(seven, arguments, monkeypatch):
    network, path = seven
    frames = smooth_frames(length=10, height=24, width=40)
    clip = clip_of(frames)
    up = core.iedvr.Upscale(clip, model=path, fp16=0, device_index=-1, **arguments)
    tolerance = 0.01 if "overlap" in arguments else 1e-5
    # Out of order, as VapourSynth's threads request them.
    for n in (9, 0, 5, 1, 8, 3):
        np.testing.assert_allclose(planes(up.get_frame(n)),
                                   expected(network, frames, window_of(n, 9, 3)), atol=tolerance)


def test_a_seven_frame_model_without_the_cache(seven, monkeypatch):
    network, path = seven
    frames = smooth_frames(length=8, height=24, width=40)
    messages = []
    handle = core.add_log_handler(lambda kind, text: messages.append(text))
    # Whole frames given, and a budget with no room for a cache: every window computes all its
    # frames' features.
    monkeypatch.setenv("IEDVR_MAX_MEMORY_MB", "0.01")
    try:
        up = core.iedvr.Upscale(clip_of(frames), model=path, fp16=0, device_index=-1, tilesize=0)
        out = [planes(up.get_frame(n)) for n in (2, 3)]
    finally:
        core.remove_log_handler(handle)
    assert any("whole, features of 0 frames cached" in m for m in messages), messages
    for n, frame in zip((2, 3), out):
        np.testing.assert_allclose(frame, expected(network, frames, window_of(n, 7, 3)), atol=1e-5)


def test_a_seven_frame_model_at_cuts_and_on_short_clips(seven):
    network, path = seven
    frames = smooth_frames(length=9, height=16, width=24)
    for cut in range(0, 8):  # a cut after frame `cut`: at every position of the windows
        props = {cut: {"_SceneChangeNext": 1}}
        up = core.iedvr.Upscale(clip_of(frames, props=props), model=path, fp16=0, device_index=-1)
        for n in range(max(0, cut - 3), min(9, cut + 4)):
            np.testing.assert_allclose(planes(up.get_frame(n)),
                                       expected(network, frames, window_of(n, 8, 3, [cut])),
                                       atol=1e-5, err_msg=f"cut after {cut}, frame {n}")
    for length in (1, 2, 3):  # shorter than the window
        short = frames[:length]
        up = core.iedvr.Upscale(clip_of(short), model=path, fp16=0, device_index=-1)
        for n in range(length):
            np.testing.assert_allclose(planes(up.get_frame(n)),
                                       expected(network, short, window_of(n, length - 1, 3)),
                                       atol=1e-5)


def test_a_scale_1_model_returns_frames_of_the_input_size(tmp_path):
    reference = basicsr_network("EDVR_L_deblur_REDS")
    network = IEDVR(edvr_config(reference.state_dict())).eval()
    network.load_state_dict(reference.state_dict())
    path = tmp_path / "deblur.pt"
    model_file.export_model(network, path, "edvr")
    frames = smooth_frames(length=6, height=21, width=35)  # padded to 32x48 inside, then cropped
    up = core.iedvr.Upscale(clip_of(frames), model=str(path), fp16=0, device_index=-1)
    assert (up.width, up.height) == (35, 21)
    for n in (0, 3, 5):
        np.testing.assert_allclose(planes(up.get_frame(n)),
                                   expected(network, frames, window_of(n, 5, 2)), atol=1e-5)
    with pytest.raises(vs.Error, match=r"scale=4 contradicts the model file .*deblur.pt, which "
                                       r"restores frames at their own size \(scale 1\)"):
        core.iedvr.Upscale(clip_of(frames), model=str(path), scale=4)
    # The wrapper, on a YUV 4:2:0 clip: back in its format at its own size.
    import vs_iedvr
    yuv = core.resize.Bicubic(clip_of(smooth_frames(length=4, height=24, width=40)),
                              format=vs.YUV420P8, matrix_s="709")
    restored = vs_iedvr.upscale(yuv, model=str(path), fp16=0)
    assert (restored.format.id, restored.width, restored.height) == (vs.YUV420P8, 40, 24)
    restored.get_frame(1)
    with pytest.raises(vs.Error, match=r"restores frames at their own size \(scale 1\)"):
        vs_iedvr.upscale(yuv, model=str(path), scale=4)


def test_a_seven_frame_model_through_vs_mlrt(seven, tmp_path):
    # The ONNX graph takes 21 planes (7 frames x RGB); vs_iedvr.mlrt builds the 7 shifted clips.
    pytest.importorskip("onnx")
    if not hasattr(core, "ov"):
        pytest.skip("vs-mlrt's OpenVINO backend is not installed (pip install vapoursynth-mlrt-ov)")
    from test_onnx_export import OPENVINO_FLOAT32
    from vs_iedvr import mlrt, onnx_export

    network, _ = seven
    path = tmp_path / "seven.onnx"
    metadata = onnx_export.export_onnx(network, path, "openvino", "edvr")
    assert metadata["num_frames"] == 7
    frames = smooth_frames(length=8, height=16, width=24)
    cut = {5: {"_SceneChangePrev": 1}}
    result = mlrt.upscale(clip_of(frames, props=cut), path, config=lambda: OPENVINO_FLOAT32)
    for n in range(8):
        np.testing.assert_allclose(planes(result.get_frame(n)),
                                   expected(network, frames, window_of(n, 7, 3, [4])),
                                   atol=5e-5, err_msg=f"frame {n}")


def test_bad_checkpoints_are_one_line_from_export(tmp_path, run_here):
    good = tmp_path / "good.pth"
    torch.save({"params": basicsr_network("EDVR_M_x4_SR_REDS_woTSA").state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "other.pth"  # another network's state dict (a plain SR network's)
    torch.save({"params": {"conv_first.weight": torch.zeros(64, 3, 3, 3), "body.0.weight":
                           torch.zeros(64, 64, 3, 3), "conv_last.weight": torch.zeros(3, 64, 3, 3)}},
               other)
    odd = tmp_path / "odd-features.pth"  # 20 features cannot split into 8 deformable groups
    torch.manual_seed(0)
    torch.save({"params": basicsr_edvr().EDVR(num_feat=20, num_extract_block=1,
                                             num_reconstruct_block=1, with_tsa=False).state_dict()},
               odd)
    for checkpoint, message in [
        (truncated, "is not a checkpoint that can be loaded safely"),
        (other, "matches no EDVR layout: it has no conv_l2_1.weight"),
        (odd, "matches no EDVR layout: its layout"),
    ]:
        result = export(run_here, checkpoint, tmp_path / "model.pt")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert message in lines[0] and str(checkpoint) in lines[0], lines[0]
