"""Checkpoints are loaded with torch.load(weights_only=True): tensors, containers and numbers only.
A crafted pickle whose __reduce__ runs code (here: creates a marker file) is refused, with one line
naming the file, wherever a command reads a checkpoint, and its code never runs. The commands run
in this process (run_here, in conftest.py), where a payload that ran would leave its marker too."""

import re

import pytest
import torch

from test_cli_errors import assert_one_line
from test_training import TINY_NETWORK, write_clip
from vs_iedvr import model_file


class Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    """(a checkpoint-shaped pickle carrying the payload, the marker that the payload creates)."""
    marker = tmp_path / "payload-ran"
    path = tmp_path / "crafted.pt"
    torch.save({"model": {"weight": Payload(marker)}, "step": 1, "best_psnr": 0.0}, path)
    # The payload is live: the unsafe load runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_load_checkpoint_refuses_the_payload_naming_the_file(crafted):
    path, marker = crafted
    with pytest.raises(model_file.ModelFileError,
                       match=rf"^{re.escape(str(path))} is not a vs-iedvr checkpoint that can be loaded safely: "
                             r"Unsupported global: GLOBAL _io.open"):
        model_file.load_checkpoint(path, path, "a vs-iedvr checkpoint")
    assert not marker.exists()


def train(run_here, tmp_path, out_dir, *options):
    write_clip(tmp_path / "clips" / "000", frames=5)
    return run_here("vs_iedvr.training", "train", "--data", tmp_path / "clips", "--out-dir", out_dir,
                    "--network", *[f"{k}={v}" for k, v in TINY_NETWORK.items()], "--patch-size",
                    "8", "--num-workers", "0", "--iterations", "1", "--validation-fraction", "0",
                    *options)


def test_train_does_not_resume_from_a_crafted_last_pt(crafted, tmp_path, run_here):
    path, marker = crafted
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    path.rename(out_dir / "last.pt")
    result = train(run_here, tmp_path, out_dir)
    assert_one_line(result, f"{out_dir / 'last.pt'} is not a vs-iedvr checkpoint that can be "
                            "loaded safely")
    assert not marker.exists()
    assert not (out_dir / "model.pt").exists()


def test_train_does_not_warm_start_from_a_crafted_checkpoint(crafted, tmp_path, run_here):
    path, marker = crafted
    result = train(run_here, tmp_path, tmp_path / "run", "--init", path)
    assert_one_line(result, "--init", str(path))
    assert not marker.exists()
    assert not (tmp_path / "run" / "model.pt").exists()


def test_export_does_not_load_crafted_weights(crafted, tmp_path, run_here):
    path, marker = crafted
    result = run_here("vs_iedvr", "export", "--weights", path, "--output", tmp_path / "out.pt")
    assert_one_line(result, f"{path} is not a checkpoint that can be loaded safely")
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists()
