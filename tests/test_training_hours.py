"""`vs-iedvr export --training-hours`: the hours behind weights whose checkpoint does not record
them (files written before checkpoints kept their seconds, or weights trained elsewhere) go into
the model file, where --init reads them back (training then adds its own: test_warm_start.py)."""

import pytest

from small_network import export_small_network
from test_cli_errors import assert_one_line
from vs_iedvr import model_file
from vs_iedvr.training.warm_start import read_initial_weights


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("hours") / "small.pt"
    export_small_network(path, weights={"source": "small-run.pt", "state_dict_key": "model",
                                        "training": {"step": 40, "total_steps": 40}})
    return path


def test_the_hours_given_are_recorded_and_read_back(small_model, tmp_path, run_here):
    assert read_initial_weights(small_model).hours is None  # it records none
    output = tmp_path / "with-hours.pt"
    result = run_here("vs_iedvr", "export", "--from-model", small_model, "--training-hours", "3.25",
                      "--output", output)
    assert result.returncode == 0, result.stderr
    before = model_file.read_metadata(small_model)["weights"]
    after = model_file.read_metadata(output)["weights"]
    assert after.pop("training") == before.pop("training") | {"total_hours": 3.25}
    assert after == before  # the rest of the weights' provenance is kept
    assert read_initial_weights(output).hours == 3.25


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "three"])
def test_hours_that_are_not_a_duration_are_refused(small_model, tmp_path, run_here, value):
    result = run_here("vs_iedvr", "export", "--from-model", small_model, "--training-hours", value,
                      "--output", tmp_path / "x.pt")
    assert_one_line(result, "--training-hours", value)
    assert not (tmp_path / "x.pt").exists()


def test_hours_without_trained_weights_are_refused(tmp_path, run_here):
    untrained = tmp_path / "untrained.pt"
    export_small_network(untrained)
    for source in (["--arch", "iedvr-m"], ["--from-model", untrained]):
        result = run_here("vs_iedvr", "export", *source, "--training-hours", "1",
                          "--output", tmp_path / "x.pt")
        assert_one_line(result, "--training-hours", "--weights")
        assert not (tmp_path / "x.pt").exists()
