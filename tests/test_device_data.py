"""benchmarks/device_data.py packs the training data for a lent GPU machine: videos and the layered
recipe's textures as fetched, the photographs reduced by one factor until the whole fits the limit,
and the shipped weights as a float16 state dict that --init reads."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vs_iedvr import model_file
from vs_iedvr.training.warm_start import steps_in_model_file

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "vs_iedvr" / "models" / "default.pt"


def noise_jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    # Noise compresses badly, so the photographs' bytes are what must shrink.
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    base = tmp_path_factory.mktemp("device-data")
    train = base / "data" / "train"
    (train / "photos" / "set").mkdir(parents=True)
    (train / "textures").mkdir()
    (train / "dog.mkv").write_bytes((ROOT / "demo" / "dog.mkv").read_bytes())
    for number in range(4):
        noise_jpeg(train / "photos" / "set" / f"photo{number}.jpg", (640, 480), number)
    noise_jpeg(train / "textures" / "bricks.jpg", (256, 256), 10)
    photo_bytes = sum(p.stat().st_size for p in (train / "photos").rglob("*.jpg"))
    fixed = (SHIPPED.stat().st_size + (train / "dog.mkv").stat().st_size
             + (train / "textures" / "bricks.jpg").stat().st_size)
    # Room for about half the photographs' bytes beside the rest (and the manifest's 64 KiB).
    limit_mib = (fixed + 64 * 1024 + photo_bytes / 2) / 2**20
    out = base / "packed"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_data.py"), str(base / "data"),
                             str(out), "--max-mib", f"{limit_mib:.3f}", "--init", str(SHIPPED)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return train, out, limit_mib


def test_videos_and_textures_travel_as_fetched(packed):
    train, out, _ = packed
    assert (out / "train" / "dog.mkv").read_bytes() == (train / "dog.mkv").read_bytes()
    assert (out / "train" / "textures" / "bricks.jpg").read_bytes() == (train / "textures" / "bricks.jpg").read_bytes()
    assert "train/textures/: 1 images as fetched" in (out / "MANIFEST.md").read_text()


def test_photographs_shrink_by_one_factor_to_fit(packed):
    train, out, limit_mib = packed
    originals = sorted((train / "photos").rglob("*.jpg"))
    reduced = sorted((out / "train" / "photos").rglob("*.jpg"))
    assert [p.relative_to(out / "train" / "photos") for p in reduced] == \
        [p.relative_to(train / "photos") for p in originals]
    factors = {Image.open(r).width / Image.open(o).width for o, r in zip(originals, reduced)}
    assert len(factors) == 1
    factor = factors.pop()
    assert 0.3 < factor < 1
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total <= limit_mib * 2**20
    assert f"reduced to {factor:.2f} of their width and height" in (out / "MANIFEST.md").read_text()


def test_init_holds_the_shipped_weights_in_float16(packed):
    _, out, _ = packed
    saved = torch.load(out / "init.pt", weights_only=True)
    model, _ = model_file.load_model(SHIPPED)
    # The model file traces the network inside a wrapper (network.*), a checkpoint holds it bare.
    shipped = {name.removeprefix("network."): tensor.detach() for name, tensor in model.state_dict().items()}
    assert saved["model"].keys() == shipped.keys()
    for name, tensor in saved["model"].items():
        assert tensor.dtype == torch.float16
        assert torch.equal(tensor, shipped[name].to(torch.float16)), name
    assert saved["total_steps"] == steps_in_model_file(model_file.read_metadata(SHIPPED))
