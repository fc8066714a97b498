"""Checkpoints are loaded with torch.load(weights_only=True): tensors, containers and numbers only.
A crafted pickle whose __reduce__ runs code (here: creates a marker file) is refused, with one line
naming the file, wherever a command reads a checkpoint, and its code never runs. The commands run
in this process (run_here, in conftest.py), where a payload that ran would leave its marker too."""

import pickle
import re

import pytest
import torch

from test_cli_errors import assert_one_line
from test_training import TINY_NETWORK, write_clip
from vs_iedvr import model_file, weights_file


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
                             r"it holds more than tensors, containers and numbers "
                             r"\(Unsupported global: GLOBAL _io.open was not an allowed global by default\)$"):
        weights_file.load_checkpoint(path, path, "a vs-iedvr checkpoint")
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


# -- issue 35: a run keeps what it did not write, and says why a file is refused -------------------

@pytest.mark.parametrize("name", ["best.pt", "model.pt"])
def test_a_new_run_never_overwrites_weights_it_did_not_write(tmp_path, run_here, name):
    # best.pt without last.pt: the run started from scratch, exited 0 and overwrote best.pt.
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    weights = out_dir / name
    weights.write_bytes(b"a user's best weights")
    result = train(run_here, tmp_path, out_dir)
    assert_one_line(result, "--out-dir", str(weights), "did not write")
    assert weights.read_bytes() == b"a user's best weights"
    assert sorted(p.name for p in out_dir.iterdir()) == [name]


def test_a_resumed_run_writes_over_its_own_weights(tmp_path, run_here):
    # The refusal is for a new run: with last.pt, best.pt and model.pt are the run's own.
    out_dir = tmp_path / "run"
    assert train(run_here, tmp_path, out_dir).returncode == 0
    assert {"last.pt", "model.pt"} <= {p.name for p in out_dir.iterdir()}
    result = train(run_here, tmp_path, out_dir, "--iterations", "2")
    assert result.returncode == 0, result.stderr


def test_a_plain_pickle_is_refused_with_the_reason(tmp_path, run_here):
    # pickle.dump's file ended "...that can be loaded safely:" with nothing after the colon,
    # after torch's warning that advised weights_only=False.
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"model": {"weight": [1.0, 2.0]}, "step": 1}, protocol=4))
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "last.pt").write_bytes(path.read_bytes())
    for result in (train(run_here, tmp_path, out_dir),
                   train(run_here, tmp_path, tmp_path / "other", "--init", path)):
        assert_one_line(result, "can be loaded safely: it holds more than tensors, "
                                "containers and numbers (Unsupported operand")
        assert "weights_only" not in result.stderr


def test_init_from_another_architecture_is_refused(tmp_path, run_here):
    # The shipped weights (64 features) into the tiny network of 16: a few tensors loaded, the
    # rest listed, and the run trained from scratch with exit 0.
    result = train(run_here, tmp_path, tmp_path / "run", "--init", "default.pt")
    assert_one_line(result, "--init", "another architecture's")
    assert not (tmp_path / "run" / "model.pt").exists()
