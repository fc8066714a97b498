"""VMAF in `vs-iedvr-train evaluate --metrics psnr ssim vmaf` (training/vmaf.py): the oracle is
ffmpeg's libvmaf run by hand, as a user runs it, on PNG files of the same frames that the test
makes itself."""

import re
import stat
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from vs_iedvr import model_file
from vs_iedvr.network import build
from vs_iedvr.training import data
from vs_iedvr.training.__main__ import main as train_main
from vs_iedvr.training.degradations import bicubic_upscale
from vs_iedvr.training.evaluate import evaluate, quantise, upscale_clip

from test_training import TINY_NETWORK, write_clip

SIZE = (96, 128)  # large enough for VMAF's four scales, small enough for seconds
FRAMES = 6


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("vmaf")
    for seed in range(2):
        write_clip(root / "clips" / f"{seed:03d}", frames=FRAMES, size=SIZE, seed=seed)
    torch.manual_seed(0)
    model = root / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), model, "tiny")
    return root, model


def ffmpeg_by_hand(distorted: torch.Tensor, reference: torch.Tensor, folder) -> float:
    """The mean VMAF that `ffmpeg -i distorted_%03d.png -i reference_%03d.png -lavfi libvmaf`
    prints for [N, 3, H, W] frames in [0, 1]."""
    folder.mkdir()
    for name, frames in (("distorted", distorted), ("reference", reference)):
        for index, frame in enumerate(frames):
            pixels = (frame * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / f"{name}_{index:03d}.png")
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin",
                             "-i", "distorted_%03d.png", "-i", "reference_%03d.png",
                             "-lavfi", "[0:v][1:v]libvmaf", "-f", "null", "-"],
                            cwd=folder, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return float(re.search(r"VMAF score: ([0-9.]+)", result.stderr)[1])


def test_vmaf_is_what_ffmpegs_libvmaf_gives_on_the_same_frames(clips, tmp_path):
    root, model = clips
    results = evaluate(model, [str(root / "clips")], metrics=("psnr", "ssim", "vmaf"))
    network = model_file.load_model(model)[0]
    expected = {"bicubic": {}, "model": {}}
    for clip in ("000", "001"):
        paths = sorted((root / "clips" / clip).glob("*.png"))
        high = torch.stack([data.read_image(p) for p in paths]).float() / 255
        low = data.degrade(high, 4, "BI")
        upscaled = {"bicubic": bicubic_upscale(low, 4), "model": upscale_clip(network, low, 5)}
        for method, frames in upscaled.items():
            expected[method][f"clips/{clip}"] = ffmpeg_by_hand(quantise(frames), high,
                                                               tmp_path / f"{method}-{clip}")
    for method in ("bicubic", "model"):
        per_clip, mean = results[method]["vmaf"]
        assert per_clip == pytest.approx(expected[method], abs=1e-5)
        assert mean == pytest.approx(np.mean(list(expected[method].values())), abs=1e-5)
    # Scores that tell the two apart: bicubic of smooth stripes against an untrained network.
    assert 20 < expected["bicubic"]["clips/000"] < 99.9
    assert expected["model"]["clips/000"] != expected["bicubic"]["clips/000"]
    # PSNR and SSIM are those of the default metrics, which are unchanged (and without VMAF).
    default = evaluate(model, [str(root / "clips")])
    assert set(default["model"]) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    for method in ("bicubic", "model"):
        for score, values in default[method].items():
            assert results[method][score] == values


def test_evaluate_command_prints_vmaf_per_clip_and_condition(clips, capsys):
    root, model = clips
    assert train_main(["evaluate", str(model), str(root / "clips"), "--max-frames", "5",
                       "--metrics", "psnr", "ssim", "vmaf", "--conditions", "clean", "crf30",
                       "--cache", str(root / "cache")]) == 0
    out = capsys.readouterr().out
    assert out.count("bicubic PSNR-Y  SSIM-Y    VMAF") == 2
    crf30 = evaluate(model, [str(root / "clips")], max_frames=5, condition="crf30",
                     metrics=("vmaf",))
    summary = out[out.index("sources    "):].splitlines()
    assert "bicubic PSNR-Y / SSIM-Y / VMAF" in summary[0]
    row = summary[2].split()
    assert row[0] == "crf30"
    # The row's last score before the gain is the model's VMAF on the compressed sources.
    assert float(row[-3]) == pytest.approx(crf30["model"]["vmaf"][1], abs=0.005)
    # VMAF alone: one column per method.
    assert train_main(["evaluate", str(model), str(root / "clips"), "--max-frames", "5",
                       "--metrics", "vmaf"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["clip", "bicubic", "VMAF", "model", "VMAF"]


def test_an_ffmpeg_without_libvmaf_is_one_clear_line(clips, tmp_path, monkeypatch, capfd):
    root, model = clips
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho ' .. scale      V->V       Scale the input video size.'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake))
    status = train_main(["evaluate", str(model), str(root / "clips"), "--metrics", "psnr", "vmaf"])
    err = capfd.readouterr().err
    assert status == 2
    assert f"--metrics vmaf: {fake} has no libvmaf filter" in err and len(err.splitlines()) == 1
    # The default metrics need no ffmpeg.
    assert train_main(["evaluate", str(model), str(root / "clips"), "--max-frames", "5"]) == 0


def test_an_unknown_metric_is_refused_by_name(clips, capfd):
    root, model = clips
    with pytest.raises(SystemExit) as exit:
        train_main(["evaluate", str(model), str(root / "clips"), "--metrics", "lpips"])
    assert exit.value.code == 2
    assert "argument --metrics: invalid choice: 'lpips' (choose from 'psnr', 'ssim', 'vmaf')" in (
        capfd.readouterr().err)
