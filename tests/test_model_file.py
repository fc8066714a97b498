"""The model file: traced network plus metadata, any input size, other precisions, clear errors."""

import json
import re
import subprocess
import sys
import zipfile
import zlib

import pytest
import torch

import vs_iedvr.ops
from small_network import SMALL, export_small_network
from vs_iedvr import flops, model_file, weights_file
from vs_iedvr.network import IEDVR, build



@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.pt"
    return export_small_network(path, "iedvr-small", {"source": "test"}), path


@pytest.mark.parametrize("height, width", [(32, 48), (36, 44), (17, 23), (5, 7), (64, 20)])
def test_traced_equals_eager_at_other_sizes(exported, height, width):
    net, path = exported
    model, _ = model_file.load_model(path)
    frames = torch.rand(1, 5, 3, height, width)
    with torch.no_grad():
        traced = model(frames)
        eager = model_file.PaddedNetwork(net)(frames)
    assert traced.shape == (1, 3, 4 * height, 4 * width)
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


def test_padding_only_extends_the_frame(exported):
    # Where no padding is needed, the wrapper is exactly the network.
    net, path = exported
    model, _ = model_file.load_model(path)
    frames = torch.rand(2, 5, 3, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(frames), net(frames), rtol=1e-5, atol=1e-5)


def relative_error(result, reference, base):
    return ((result.float() - reference).norm() / (reference - base).norm()).item()


def test_bfloat16_close_to_float32(exported):
    _, path = exported
    model, _ = model_file.load_model(path)
    frames = torch.rand(1, 5, 3, 16, 20)
    with torch.no_grad():
        reference = model(frames)
        low = model.to(torch.bfloat16)(frames.bfloat16())
    assert low.dtype == torch.bfloat16
    # Within a few times the error of merely rounding the float32 result to bfloat16.
    rounding = (reference.bfloat16().float() - reference).norm()
    assert (low.float() - reference).norm() < 4 * rounding


def test_float16_conversion(exported):
    _, path = exported
    model, _ = model_file.load_model(path)
    model = model.half()
    assert all(p.dtype == torch.float16 for p in model.parameters())
    frames = torch.rand(1, 5, 3, 8, 8)
    if torch.cuda.is_available() and vs_iedvr.ops.has_cuda_kernels():
        reference, _ = model_file.load_model(path)
        with torch.no_grad():
            out = model.cuda()(frames.half().cuda()).float().cpu()
            expected = reference(frames)
        base = torch.nn.functional.interpolate(frames[:, 2], scale_factor=4, mode="bilinear")
        assert relative_error(out, expected, base) < 0.01


def test_float16_stored_weights_load_as_float32(exported, tmp_path):
    net, path = exported
    half_path = tmp_path / "half.pt"
    metadata = model_file.export_model(net, half_path, "iedvr-small", {"source": "test"},
                                       weights_dtype="float16")
    assert metadata["weights_dtype"] == "float16"
    assert model_file.read_metadata(half_path)["weights_dtype"] == "float16"
    with zipfile.ZipFile(half_path) as archive:
        stored = sum(i.file_size for i in archive.infolist() if "/data/" in i.filename)
    with zipfile.ZipFile(path) as archive:
        full = sum(i.file_size for i in archive.infolist() if "/data/" in i.filename)
    assert stored < 0.55 * full
    model, _ = model_file.load_model(half_path)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # Equal to the eager network whose weights went through float16.
    rounded = IEDVR(SMALL).eval()
    rounded.load_state_dict({k: v.half().float() for k, v in net.state_dict().items()})
    frames = torch.rand(1, 5, 3, 12, 20, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(frames), rounded(frames), atol=1e-5)
    with pytest.raises(ValueError, match="weights_dtype"):
        model_file.export_model(net, tmp_path / "x.pt", "iedvr-small", weights_dtype="int8")


def test_training_checkpoint_provenance(tmp_path):
    torch.manual_seed(0)
    net = IEDVR(SMALL)
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": net.state_dict(), "step": 1234, "best_psnr": 31.5,
                "config": {"learning_rate": 2e-4, "data": ["stills:photos"]}}, checkpoint)
    provenance = weights_file.load_weights(IEDVR(SMALL), checkpoint)
    assert provenance["state_dict_key"] == "model"
    # Without a warm start, the checkpoint's own steps are all the steps behind its weights.
    # A checkpoint that does not record its hours, or its own weights' validation score, leaves
    # them unknown, not 0 (nor the run's best).
    assert provenance["training"] == {"step": 1234, "total_steps": 1234, "total_hours": None,
                                      "val_psnr_y": None, "best_val_psnr_y": 31.5,
                                      "config": {"learning_rate": 2e-4, "data": ["stills:photos"]}}
    torch.save({"model": net.state_dict(), "step": 0, "best_psnr": float("-inf"), "config": {},
                "total_steps": 6500, "total_hours": 12.5}, checkpoint)
    training = weights_file.load_weights(IEDVR(SMALL), checkpoint)["training"]
    assert training["best_val_psnr_y"] is None and training["total_steps"] == 6500
    assert training["total_hours"] == 12.5
    # A crafted checkpoint's score that is not a number is refused, naming it.
    torch.save({"model": net.state_dict(), "step": 1, "best_psnr": 30.0, "val_psnr_y": "high",
                "config": {}}, checkpoint)
    with pytest.raises(model_file.ModelFileError, match="val_psnr_y is 'high', not a number"):
        weights_file.load_weights(IEDVR(SMALL), checkpoint)


def test_metadata(exported):
    _, path = exported
    metadata = model_file.read_metadata(path)
    assert metadata["format"] == "vs-iedvr-model"
    assert metadata["architecture"] == "iedvr-small"
    assert metadata["scale"] == 4 and metadata["num_frames"] == 5
    assert metadata["parameters"] == sum(p.numel() for p in IEDVR(SMALL).parameters())
    assert model_file.config_of(metadata) == SMALL
    assert metadata["weights"] == {"source": "test"}
    assert metadata["input"]["colour_space"] == "RGB"


def test_weights_checksum_is_the_crc32_of_the_network_state(exported, tmp_path):
    # Oracle: the eager network's state dict (the model file holds it under "network."), each
    # tensor's bytes in name order, through zlib; the engine computes the same in C++.
    net, path = exported
    state = net.state_dict()
    crc = 0
    for name in sorted(state):
        crc = zlib.crc32(state[name].float().contiguous().numpy().tobytes(), crc)
    assert model_file.read_metadata(path)["weights_crc32"] == f"{crc:08x}"
    # A file without it is not loaded unchecked (issue 35; tests/test_hostile_inputs.py has the
    # filter's side and a checksum of the wrong type).
    metadata = model_file.read_metadata(path)
    del metadata["weights_crc32"]
    older = tmp_path / "older.pt"
    with model_file.without_torchscript_deprecation():
        torch.jit.save(torch.jit.load(str(path)), str(older),
                       _extra_files={model_file.METADATA_ENTRY: json.dumps(metadata)})
    with pytest.raises(model_file.ModelFileError, match='"weights_crc32" is missing'):
        model_file.load_model(older)


def test_flops_scale_with_pixels_and_count_the_deformable_convolutions(exported):
    net, path = exported
    model, metadata = model_file.load_model(path)
    small = flops.flops_per_frame(model, metadata, 16, 16)
    large = flops.flops_per_frame(model, metadata, 32, 32)
    assert large == pytest.approx(4 * small, rel=0.01)
    # Independent count for one DCNv2Pack: its offset convolution plus the operator's formula.
    pack = net.pcd_align.cas_dcnpack
    x = torch.rand(1, 16, 8, 8)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        pack(x, x)
    offset_conv = 2 * 8 * 8 * pack.conv_offset.out_channels * 16 * 9
    deformable = vs_iedvr.ops.modulated_deform_conv2d_flops(1, 16, 16, 8, 8, (3, 3))
    assert counter.get_total_flops() == offset_conv + deformable


def test_missing_truncated_and_foreign_files(exported, tmp_path):
    _, path = exported
    with pytest.raises(model_file.ModelFileError, match="does not exist"):
        model_file.load_model(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(model_file.ModelFileError, match="not a vs-iedvr model file"):
        model_file.load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    with model_file.without_torchscript_deprecation():
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(model_file.ModelFileError, match="without vs-iedvr metadata"):
        model_file.load_model(foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(model_file.ModelFileError, match="not a readable TorchScript archive"):
        model_file.load_model(text)


def test_newer_format_is_refused(exported, tmp_path):
    _, path = exported
    newer = tmp_path / "newer.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(newer, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("extra/vs_iedvr.json"):
                metadata = json.loads(data)
                metadata["format_version"] = 99
                data = json.dumps(metadata).encode()
            target.writestr(item, data)
    with pytest.raises(model_file.ModelFileError, match="upgrade"):
        model_file.load_model(newer)


# The commands run in this process (run_here, conftest.py): the process entry point is tested in
# test_cli_errors.py, and below with an address-space limit.

def test_command_line_export_and_info(tmp_path, run_here):
    output = tmp_path / "edvr.pt"
    run = lambda *args: run_here("vs_iedvr", *args)
    result = run("export", "--arch", "edvr-m", "--output", str(output))
    assert result.returncode == 0, result.stderr
    result = run("info", str(output), "--size", "16x8")
    assert result.returncode == 0, result.stderr
    assert "parameters: 3,300,131" in result.stdout
    assert "FLOPs per output frame at 16x8 input (64x32 output)" in result.stdout
    result = run("info", str(tmp_path / "nothing.pt"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_command_line_selftest_and_installation_info(run_here):
    run = lambda *args: run_here("vs_iedvr", *args)
    selftest = run("selftest")
    assert selftest.returncode == 0, selftest.stderr
    assert "selftest passed" in selftest.stdout
    info = run("info")
    assert info.returncode == 0, info.stderr
    assert "operator library:" in info.stdout and "VapourSynth plugin:" in info.stdout


def with_metadata(path, target, **claims):
    """A copy of the model file at `path` whose metadata (its top level and its network's config
    alike) claims `claims`: the same traced network and weights, their checksum still right, so
    that only the claim is wrong."""
    metadata = model_file.read_metadata(path)
    metadata.update(claims)
    metadata["config"].update({"num_frame" if name == "num_frames" else name: value
                               for name, value in claims.items()})
    with model_file.without_torchscript_deprecation():
        torch.jit.save(torch.jit.load(str(path)), str(target),
                       _extra_files={model_file.METADATA_ENTRY: json.dumps(metadata)})
    return target


@pytest.mark.parametrize("frames", [7, 15, 3])
def test_a_frame_count_that_is_not_the_networks_is_refused(exported, tmp_path, frames):
    # The small network is traced for 5 frames (SMALL.num_frame). Through the plugin's methods a
    # 7-frame window runs and its last frames are ignored: a plausible, wrong frame, no error.
    _, path = exported
    assert SMALL.num_frame == 5
    if frames == 7:
        with model_file.without_torchscript_deprecation():
            traced = torch.jit.load(str(path))
        window = torch.rand(7, 3, 8, 8)
        changed = window.clone()
        changed[5:] = 0
        with torch.no_grad():
            upscaled = [traced.upscale(*[level.unsqueeze(0) for level in traced.features(frames)],
                                       frames[3:4]) for frames in (window, changed)]
        assert torch.equal(*upscaled)
    crafted = with_metadata(path, tmp_path / f"claims-{frames}.pt", num_frames=frames)
    with pytest.raises(model_file.ModelFileError,
                       match=rf"claims-{frames}.pt: its metadata says {frames} input frames, but "
                             r"its network reads 5$"):
        model_file.load_model(crafted)


def test_a_scale_that_is_not_the_networks_is_refused(exported, tmp_path):
    _, path = exported
    crafted = with_metadata(path, tmp_path / "claims-x2.pt", scale=2)
    with pytest.raises(model_file.ModelFileError,
                       match=r"claims-x2.pt: its metadata says scale 2, but its network upscales x4$"):
        model_file.load_model(crafted)


def test_the_probe_passes_every_architecture_and_both_scales(tmp_path):
    # The check must never refuse an honest file: each preset's blocks (rigid preprocessing,
    # temporal 3D fusion, channel attention; EDVR's residual blocks and TSA fusion), x2 and x4,
    # 7 frames and 5; narrow, so that the traces take little time.
    narrow = {"num_feat": 16, "deformable_groups": 4, "num_reconstruct_block": 1}
    rigid = {"rigid_widths": (8, 16), "num_rigid_keep": 1, "num_enhance_block": 1}
    for arch, overrides in (("iedvr-m", {**narrow, **rigid, "scale": 2, "num_frame": 7}),
                            ("edvr-m", {**narrow, "num_extract_block": 1})):
        path = tmp_path / "honest.pt"
        model_file.export_model(build(arch, **overrides), path, arch)
        _, metadata = model_file.load_model(path)
        assert (metadata["num_frames"], metadata["scale"]) == (overrides.get("num_frame", 5),
                                                               overrides.get("scale", 4))


def test_flops_counted_on_the_meta_device_equal_those_of_running_the_model(exported):
    # Oracle: the count of running the traced model on the CPU at that size.
    _, path = exported
    model, metadata = model_file.load_model(path)
    for height, width in ((180, 320), (17, 23)):
        assert (flops.flops_per_frame_of_config(metadata, height, width)
                == flops.flops_per_frame(model, metadata, height, width))


def test_info_counts_the_flops_of_a_huge_size_in_little_memory(exported, tmp_path):
    # 20000x20000: 24 GB for the input frames alone. Under an 8 GiB address-space limit the
    # count must still come. Oracle: the count of running the model at 16x16 and 32x32 (no
    # padding at either, nor at 20000), extended linearly in the pixels: every counted operation
    # is per pixel, but for the channel attention's few on pooled features, per frame.
    import resource

    _, path = exported
    model, metadata = model_file.load_model(path)
    small, large = (flops.flops_per_frame(model, metadata, side, side) for side in (16, 32))
    expected = small + (large - small) * (20000**2 - 16**2) // (32**2 - 16**2)
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    result = subprocess.run([sys.executable, "-m", "vs_iedvr", "info", str(path), "--size",
                             "20000x20000"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, preexec_fn=limit)
    assert result.returncode == 0, result.stderr
    counted = float(re.search(r"at 20000x20000 input \(80000x80000 output\): ([\d.]+) G",
                              result.stdout).group(1))
    assert counted == pytest.approx(expected / 1e9, abs=0.05)
