"""Every command-line error of vs-iedvr and vs-iedvr-train is one line on stderr naming the file or
argument at fault, with a non-zero exit status; --debug (or IEDVR_DEBUG=1) shows the traceback.

Each case runs the command's main(argv) in this process on a bad input (run_here, in conftest.py),
its exit status and what it wrote to file descriptors 1 and 2 captured (so that output from C++ or
a library counts too): a fresh process per case cost several seconds of importing torch. A few cases run the real command
in a fresh process, for what only a process shows: the `python -m` entry points, the exit status
they return, Python's own traceback with --debug. `vs-iedvr selftest` has no case: it fails only
when the compiled operator computes wrong values, which no input can cause.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from small_network import export_small_network
from test_training import TINY_NETWORK, write_clip, write_lossless_video
from vs_iedvr import model_file
from vs_iedvr.__main__ import run_command

# A Python warning is its line and, indented under it, the source line that raised it.
WARNING = re.compile(r"^\S.*:\d+: \w*Warning: ")


def run(module: str, *args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def error_lines(stderr: str) -> list[str]:
    """stderr's lines, without blank lines and Python warnings."""
    lines, skip_source = [], False
    for line in stderr.splitlines():
        if skip_source and line.startswith(" "):
            skip_source = False
            continue
        skip_source = bool(WARNING.match(line))
        if line.strip() and not skip_source:
            lines.append(line)
    return lines


def assert_one_line(result: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2 (a bad argument or file), one line on stderr, naming every one of `names`."""
    lines = error_lines(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A model file, a damaged copy, files of other kinds, a clip folder, a truncated video."""
    root = tmp_path_factory.mktemp("files")
    model = root / "small.pt"
    export_small_network(model)
    # Damaged: bytes in the middle of the largest weights entry flipped (the zip stays readable).
    data = bytearray(model.read_bytes())
    with zipfile.ZipFile(model) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename),
                    key=lambda i: i.file_size)
    name_and_extra = int.from_bytes(data[entry.header_offset + 26 : entry.header_offset + 28], "little") \
        + int.from_bytes(data[entry.header_offset + 28 : entry.header_offset + 30], "little")
    middle = entry.header_offset + 30 + name_and_extra + entry.file_size // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    (root / "flipped.pt").write_bytes(data)
    (root / "notes.txt").write_text("not a model\n")
    with zipfile.ZipFile(root / "archive.zip", "w") as archive:
        archive.writestr("readme.txt", "a zip, not a model")
    torch.save({"model": {"weight": torch.zeros(2)}}, root / "checkpoint.pt")
    # A pickle that weights_only refuses, harmlessly: a Fraction is no tensor, container or number.
    torch.save({"params": {"weight": Fraction(1, 2)}}, root / "refused.pt")
    write_clip(root / "clips" / "000", frames=5)
    _, video = write_lossless_video(root / "video.mkv", 8)
    # The container's header and no whole frame: decodes to nothing, without an error from FFmpeg.
    (root / "truncated.mkv").write_bytes(video.read_bytes()[:1000])
    return root


@pytest.mark.parametrize("name", ["flipped.pt", "notes.txt", "archive.zip", "checkpoint.pt"])
def test_info_on_a_file_that_is_not_a_model(files, run_here, name):
    line = assert_one_line(run_here("vs_iedvr", "info", files / name), name)
    if name == "flipped.pt":
        assert "is damaged" in line


def test_the_vs_iedvr_process_exits_2_with_one_line(files, tmp_path):
    # The entry point as a user runs it: the status reaches the shell, and nothing else (an import's
    # warning, a library's message) reaches stderr.
    line = assert_one_line(run("vs_iedvr", "info", files / "flipped.pt", cwd=tmp_path), "flipped.pt")
    assert "is damaged" in line


@pytest.mark.parametrize("option, value, name", [
    ("--weights", "refused.pt", "refused.pt"),  # a pickle that weights_only refuses
    ("--weights", "missing.pt", "missing.pt"),
    ("--from-model", "missing.pt", "missing.pt"),
])
def test_export_from_a_file_it_cannot_use(files, tmp_path, run_here, option, value, name):
    result = run_here("vs_iedvr", "export", option, files / value, "--output", tmp_path / "out.pt")
    assert_one_line(result, name)
    assert not (tmp_path / "out.pt").exists()


def test_bench_with_no_frames(files, run_here):
    result = run_here("vs_iedvr", "bench", "--frames", "0", "--model", files / "small.pt")
    assert_one_line(result, "--frames", "'0'")


def train_args(files, tmp_path, *options):
    return ("train", "--data", files / "clips", "--out-dir", tmp_path / "run", "--network",
            *[f"{k}={v}" for k, v in TINY_NETWORK.items()], "--patch-size", "8",
            "--num-workers", "0", *options)


@pytest.mark.parametrize("options, names", [
    (["--learning-rate", "nan"], ["--learning-rate", "nan"]),
    (["--scale", "3"], ["--scale", "3"]),
    (["--arch", "edvr-xl"], ["--arch", "edvr-xl"]),
    (["--num-workers", "-1"], ["--num-workers", "-1"]),
    (["--batch-size", "0"], ["--batch-size", "0"]),  # was a ZeroDivisionError
    (["--iterations", "-1"], ["--iterations", "-1"]),  # trained nothing, then missed last.pt
    (["--device", "cuda"], ["--device cuda"]),
], ids=["learning-rate-nan", "scale-3", "unknown-arch", "negative-workers", "batch-size-0",
        "iterations-minus-1", "cuda-without-gpu"])
def test_train_with_a_bad_option(files, tmp_path, run_here, options, names):
    if options[0] == "--device" and torch.cuda.is_available():
        pytest.skip("torch sees a GPU: --device cuda is no error here")
    result = run_here("vs_iedvr.training", *train_args(files, tmp_path, *options))
    assert_one_line(result, *names)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_vs_iedvr_train_process_exits_2_with_one_line(files, tmp_path):
    # The training entry point as a user runs it, on the bad option that was a ZeroDivisionError.
    result = run("vs_iedvr.training", *train_args(files, tmp_path, "--batch-size", "0"), cwd=tmp_path)
    assert_one_line(result, "--batch-size", "0")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_train_on_a_truncated_video(files, tmp_path, run_here):
    # It used to decode to an empty clip and fail on its first frame with an IndexError.
    args = train_args(files, tmp_path)
    args = (*args[:2], files / "truncated.mkv", *args[3:])
    line = assert_one_line(run_here("vs_iedvr.training", *args), "truncated.mkv")
    assert "no frame could be decoded" in line or "cannot decode" in line


def test_evaluate_a_damaged_model_file(files, run_here):
    result = run_here("vs_iedvr.training", "evaluate", files / "flipped.pt", files / "clips")
    assert_one_line(result, "flipped.pt", "is damaged")


def test_fetch_data_into_a_file(files, run_here):
    result = run_here("vs_iedvr.training", "fetch-data", files / "notes.txt")
    assert_one_line(result, "notes.txt")
    assert (files / "notes.txt").read_text() == "not a model\n"


@pytest.mark.parametrize("module, args, debug_env", [
    ("vs_iedvr", ["--debug", "info", "notes.txt"], False),
    ("vs_iedvr.training", ["evaluate", "notes.txt", "clips", "--debug"], False),
    ("vs_iedvr.training", ["fetch-data", "notes.txt"], True),
])
def test_debug_shows_the_traceback_once(files, module, args, debug_env):
    env = dict(os.environ, IEDVR_DEBUG="1") if debug_env else None
    result = run(module, *args, cwd=files, env=env)
    assert result.returncode != 0
    assert result.stderr.count("Traceback (most recent call last)") == 1, result.stderr
    assert "notes.txt" in error_lines(result.stderr)[-1]


def test_an_unexpected_error_is_one_line_with_its_type_and_the_debug_hint(capsys):
    # Not a refused input but a failure (here a division by zero): its type, its message and
    # how to see where it came from, exit status 1.
    args = argparse.Namespace(run=lambda args: 1 // 0, debug=False)
    assert run_command(args) == 1
    assert capsys.readouterr().err == ("error: ZeroDivisionError: integer division or modulo by "
                                       "zero (run with --debug for the traceback)\n")
    args.debug = True
    with pytest.raises(ZeroDivisionError):
        run_command(args)


# -- issue 35: argument errors without torch, messages that say what is wrong ---------------------

@pytest.fixture(scope="module")
def without_torch(tmp_path_factory):
    """An environment whose first `torch` on the path refuses to be imported."""
    stub = tmp_path_factory.mktemp("stub") / "torch"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ImportError('torch imported to parse arguments')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(stub.parent),
                                                                    os.environ.get("PYTHONPATH")])))
    # The stub works: whatever computes fails under it.
    result = subprocess.run([sys.executable, "-c", "import vs_iedvr.ops"], capture_output=True,
                            text=True, env=env)
    assert "torch imported to parse arguments" in result.stderr
    return env


@pytest.mark.parametrize("command, args, names", [
    ("vs-iedvr", ["--bogus"], ["unrecognized arguments: --bogus"]),  # was: a missing command
    ("vs-iedvr", ["info", "--size", "-4x5"], ["--size", "must be positive", "'-4x5'"]),
    ("vs-iedvr-train", ["train", "--batch-size", "x"], ["--batch-size", "'x'"]),
    ("vs-iedvr-train", ["--bogus"], ["unrecognized arguments: --bogus"]),
], ids=["unknown-option", "negative-size", "batch-size-x", "train-unknown-option"])
def test_argument_errors_are_answered_without_importing_torch(without_torch, tmp_path, command,
                                                              args, names):
    # The entry point as a user runs it gives its one line without torch, which took 25-40 s to
    # import on a loaded machine.
    result = subprocess.run([Path(sys.executable).parent / command, *args], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=without_torch)
    assert_one_line(result, *names)


def test_info_says_what_a_path_is_and_takes_shipped_names(files, tmp_path, run_here):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert_one_line(run_here("vs_iedvr", "info", folder), f"model file {folder} is a folder")
    # default.pt names the shipped model, as for --from-model and --init (no such file here).
    result = run_here("vs_iedvr", "info", "default.pt")
    assert result.returncode == 0, result.stderr
    assert "architecture: iedvr-m, x4, 5 input frames" in result.stdout
    assert f"model file: {model_file.SHIPPED_DIR / 'default.pt'}" in result.stdout


def test_info_on_metadata_nested_too_deep(files, tmp_path, run_here):
    # 100,000 nested lists: json.loads raised a RecursionError, reported as an unexpected error.
    metadata = model_file.read_metadata(files / "small.pt")
    nested = tmp_path / "nested.pt"
    text = json.dumps(metadata)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with model_file.without_torchscript_deprecation():
        torch.jit.save(torch.jit.load(str(files / "small.pt")), str(nested),
                       _extra_files={model_file.METADATA_ENTRY: text})
    assert_one_line(run_here("vs_iedvr", "info", nested), "nested.pt", "nested deeper")


def test_export_to_a_folder_leaves_nothing_behind(files, tmp_path, run_here):
    folder = tmp_path / "out"
    folder.mkdir()
    result = run_here("vs_iedvr", "export", "--from-model", files / "small.pt", "--output", folder)
    assert_one_line(result, f"{folder} is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no out.partial
    assert not any(folder.iterdir())
