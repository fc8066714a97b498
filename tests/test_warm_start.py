"""--init: a training run starts from a model file, one of our checkpoints or a BasicSR
checkpoint; matching tensors are loaded, the rest stays fresh and is listed."""

import time

import pytest
import torch

from vs_iedvr import model_file
from vs_iedvr.network import build
from vs_iedvr.training.warm_start import describe, read_initial_weights, warm_start

from test_training import TINY_NETWORK, dataset_root, tiny_config  # noqa: F401 (fixture)
from vs_iedvr.training.train import train


def seeded(seed, **changes):
    torch.manual_seed(seed)
    return build("iedvr-m", **{**TINY_NETWORK, **changes}).eval()


def assert_same_weights(a, b, skip=()):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if not any(name.startswith(s) for s in skip):
            assert torch.equal(x, y), name


def test_model_file_weights_are_loaded(tmp_path):
    source = seeded(1)
    model_file.export_model(source, tmp_path / "m.pt", "iedvr-m",
                            {"source": "test", "training": {"step": 123}})
    initial = read_initial_weights(tmp_path / "m.pt")
    assert (initial.kind, initial.steps) == ("model file", 123)
    target = seeded(2)
    report = warm_start(target, initial)
    assert not report.missing and not report.reshaped and not report.unused
    assert_same_weights(target, source)


def test_basicsr_checkpoint_and_other_scale(tmp_path):
    source = seeded(1)  # x4
    torch.save({"params_ema": source.state_dict()}, tmp_path / "basicsr.pth")
    target = seeded(2, scale=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = warm_start(target, read_initial_weights(tmp_path / "basicsr.pth"))
    # The x2 network lacks the second pixel-shuffle stage: everything else comes from the x4 one.
    assert report.loaded and (report.missing or report.unused or report.reshaped)
    own = target.state_dict()
    for name in report.loaded:
        assert torch.equal(own[name], source.state_dict()[name])
    for name in report.missing + report.reshaped:
        assert torch.equal(own[name], fresh[name])
    assert "tensors loaded" in describe(report, "basicsr.pth")


def test_nothing_matching_is_an_error(tmp_path):
    torch.save({"params": {"foo.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"fit 0% of the network.s parameters"):
        warm_start(seeded(0), read_initial_weights(tmp_path / "other.pth"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="--init"):
        read_initial_weights(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="does not exist"):
        read_initial_weights(tmp_path / "missing.pt")


def test_init_from_our_checkpoint_continues_the_step_count(dataset_root, tmp_path):  # noqa: F811
    first = train(tiny_config(dataset_root, tmp_path / "first", iterations=6, checkpoint_every=6))
    first_training = model_file.read_metadata(first)["weights"]["training"]
    assert first_training["total_steps"] == 6
    # From the checkpoint: the weights are those of the first run at the start of the second.
    initial = read_initial_weights(tmp_path / "first" / "last.pt")
    assert (initial.kind, initial.steps) == ("vs-iedvr checkpoint", 6)
    assert initial.hours == first_training["total_hours"] > 0
    started = time.time()
    second = train(tiny_config(dataset_root, tmp_path / "second", iterations=4, checkpoint_every=4,
                               validate_every=100, init=str(first)))
    wall = time.time() - started
    training = model_file.read_metadata(second)["weights"]["training"]
    assert training["init"] == str(first) and training["total_steps"] == 6 + 4
    # The hours go on from the model file's as the steps do: its own and the second run's.
    assert 0 < (training["total_hours"] - initial.hours) * 3600 < wall


def test_a_resume_keeps_the_weights_the_run_began_from(dataset_root, tmp_path, capsys):  # noqa: F811
    first = train(tiny_config(dataset_root, tmp_path / "first", iterations=3, checkpoint_every=3))
    run = tmp_path / "second"
    train(tiny_config(dataset_root, run, iterations=2, checkpoint_every=2, validate_every=100,
                      init=str(first)))
    capsys.readouterr()
    # Resumed by a command that names other weights (as `./run train-default codec` names
    # codec.pt when resuming a branch begun from default.pt): they are not loaded, so the
    # provenance still names the first.
    other = str(tmp_path / "first" / "last.pt")
    resumed = train(tiny_config(dataset_root, run, iterations=4, checkpoint_every=2,
                                validate_every=100, init=other))
    assert f"--init {other} left unused" in capsys.readouterr().err
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["step"] == 4 and last["config"]["init"] == str(first)
    assert last["total_steps"] == 3 + 4
    assert model_file.read_metadata(resumed)["weights"]["training"]["init"] == str(first)


def test_the_shipped_model_warm_starts_x4_and_x2():
    from pathlib import Path

    import vs_iedvr

    shipped = Path(vs_iedvr.__file__).parent / "models" / "default.pt"
    initial = read_initial_weights(shipped)
    assert initial.steps > 0
    x4 = build("iedvr-m", scale=4)
    assert not warm_start(x4, initial).missing
    model, _ = model_file.load_model(shipped)
    frames = torch.rand(1, 5, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(x4.eval()(frames), model(frames), atol=1e-5)
    report = warm_start(build("iedvr-m", scale=2), initial)
    assert report.loaded and all(n.startswith("upconv2") for n in report.unused)


def test_init_takes_a_shipped_model_by_name_unless_a_local_file_shadows_it(tmp_path, monkeypatch):
    from pathlib import Path

    import vs_iedvr

    monkeypatch.chdir(tmp_path)
    by_name = read_initial_weights("default-x2.pt")
    by_path = read_initial_weights(Path(vs_iedvr.__file__).parent / "models" / "default-x2.pt")
    assert by_name.kind == "model file" and by_name.steps == by_path.steps
    assert by_name.state.keys() == by_path.state.keys()
    assert all(torch.equal(by_name.state[k], by_path.state[k]) for k in by_path.state)
    # A file of that name where the command runs is the user's, not the shipped one.
    torch.save({"params": {"conv_first.weight": torch.zeros(1)}}, tmp_path / "default-x2.pt")
    assert read_initial_weights("default-x2.pt").kind == "BasicSR checkpoint"
    with pytest.raises(ValueError, match="--init: missing.pt does not exist"):
        read_initial_weights("missing.pt")
