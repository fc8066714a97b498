"""benchmarks/device_train.sh end to end on the CPU, as a lent GPU machine runs it but with the
installed operator library, a tiny patch and batch, and a data folder made here from the demo
clip: it trains on the clock, reports its speed and validation PSNR, and writes float16 weights
that warm-start a run and export to a model file."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from vs_iedvr import model_file
from vs_iedvr.training.data import video_frames
from vs_iedvr.training.warm_start import steps_in_model_file

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MINUTES = 0.45  # the whole command: about 20 s of training after the set-up and the reserve


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("device-train")
    train = base / "data" / "train"
    (train / "photos").mkdir(parents=True)
    (train / "textures").mkdir()
    shutil.copy(ROOT / "demo" / "dog.mkv", train / "dog.mkv")
    for number, frame in enumerate(video_frames(train / "dog.mkv")):
        if number in (2, 12):  # stills for the synthetic-motion clips and the layered scenes
            Image.fromarray(frame).save(train / "photos" / f"frame{number}.png")
        if number == 7:  # as device_data.py packs the layered recipe's textures
            Image.fromarray(frame[::2, ::2]).save(train / "textures" / "texture.png")
    env = dict(os.environ, OUT=str(base / "out"), RUN_DIR=str(base / "run"),
               DATA=str(base / "data"), DEVICE="cpu", OPS="installed", PYTHON=sys.executable,
               BATCH="1", PATCH="12", VAL_SAMPLES="2", LOG_EVERY="1", END_RESERVE_S="5")
    started = time.time()
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_train.sh"), str(MINUTES)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base, result.stdout, time.time() - started


def test_trains_the_layered_recipe(device_run):
    base, stdout, _ = device_run
    assert re.search(r"^== [\d:]+ train for [\d.]+ minutes on cpu: batch 1, patch 12, layered 0.3,", stdout, re.M), stdout
    config = torch.load(base / "out" / "last-fp16.pt", weights_only=True)["config"]
    assert config["layered_fraction"] == 0.3
    # The textures are stills, not a clip of unrelated images.
    data = base / "data" / "train"
    assert sorted(config["data"]) == sorted([f"stills:{data / 'photos'}", f"stills:{data / 'textures'}",
                                             str(data / "dog.mkv")])


def test_reports_speed_and_validation_psnr(device_run):
    base, stdout, seconds = device_run
    speed = re.search(r"^speed: ([\d.]+) steps/s \((\d+) steps in ([\d.]+) s\)$", stdout, re.M)
    assert speed, stdout
    rate, steps, train_seconds = float(speed[1]), int(speed[2]), float(speed[3])
    assert steps >= 1 and rate == pytest.approx(steps / train_seconds, rel=0.01)
    psnr = re.search(r"^validation Y-PSNR: ([\d.]+) dB at step (\d+) \(step 0: ([\d.]+) dB", stdout, re.M)
    assert psnr, stdout
    assert 20 < float(psnr[1]) < 60 and 20 < float(psnr[3]) < 60  # the shipped weights' range
    assert int(psnr[2]) == steps
    # The clock is kept: the command ends within its minutes and a little slack for the
    # process exits (the budget is what the set-up left, less the reserve).
    assert seconds < MINUTES * 60 + 15


def test_out_holds_what_a_lent_machine_returns(device_run):
    base, _, _ = device_run
    files = sorted(p for p in (base / "out").iterdir())
    assert all(p.is_file() for p in files) and len(files) <= 8
    assert {"last-fp16.pt", "best-fp16.pt", "train.log", "log.csv", "summary.txt"} <= {p.name for p in files}
    assert all(p.stat().st_size < 16 * 2**20 for p in files)
    weights = torch.load(base / "out" / "last-fp16.pt", weights_only=True)
    assert "optimizer" not in weights
    assert {t.dtype for t in weights["model"].values()} == {torch.float16}
    shipped = model_file.read_metadata(ROOT / "vs_iedvr" / "models" / "default.pt")
    steps_behind = steps_in_model_file(shipped)
    assert steps_behind > 0
    assert weights["init_steps"] == steps_behind and weights["total_steps"] > steps_behind


def test_checkpoint_warm_starts_a_run(device_run):
    base, _, _ = device_run
    checkpoint = base / "out" / "last-fp16.pt"
    result = subprocess.run(
        [str(BIN / "vs-iedvr-train"), "train", "--init", str(checkpoint),
         "--data", str(base / "data" / "train" / "dog.mkv"), "--out-dir", str(base / "again"),
         "--iterations", "1", "--patch-size", "12", "--batch-size", "1", "--num-workers", "0",
         "--validation-fraction", "0", "--no-export"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"warm start from .*last-fp16.pt: 276 tensors loaded\n", result.stdout)
    assert "initialised fresh" not in result.stdout
    last = torch.load(base / "again" / "last.pt", weights_only=True)
    total = torch.load(checkpoint, weights_only=True)["total_steps"]
    assert last["init_steps"] == total and last["total_steps"] == total + 1


def test_checkpoint_exports_a_model_file(device_run, tmp_path, run_here):
    # vs-iedvr export in this process (run_here, conftest.py); the console script vs-iedvr-train
    # runs as a process above, and vs-iedvr in test_wheel.py.
    base, _, _ = device_run
    checkpoint = base / "out" / "best-fp16.pt"
    output = tmp_path / "model.pt"
    result = run_here("vs_iedvr", "export", "--arch", "iedvr-m", "--scale", "4", "--weights",
                      checkpoint, "--weights-dtype", "float16", "--output", output)
    assert result.returncode == 0, result.stdout + result.stderr
    model, metadata = model_file.load_model(output)
    saved = torch.load(checkpoint, weights_only=True)
    assert metadata["weights"]["training"]["total_steps"] == saved["total_steps"]
    assert metadata["architecture"] == "iedvr-m" and metadata["scale"] == 4
    with torch.no_grad():
        out = model(torch.rand(1, metadata["num_frames"], 3, 12, 16))
    assert out.shape == (1, 3, 48, 64) and torch.isfinite(out).all()
