"""Inputs that used to kill the process (regressions of issue 13): each case runs in a fresh
subprocess, so that a crash fails its test instead of the test runner, and must end in a
vapoursynth.Error (or a frame) with the process still working."""

import json
import shutil
import struct
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

from small_network import export_small_network
from vs_iedvr import model_file


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "small.pt"
    export_small_network(path)
    return path


def run_script(body: str, **values) -> subprocess.CompletedProcess:
    """Runs `body` after a prelude that defines `core`, `vs`, and `check(call)`, which prints the
    vapoursynth.Error's message (or OK) so that the parent can assert on it."""
    prelude = textwrap.dedent("""
        import vapoursynth as vs
        core = vs.core
        def check(call):
            try:
                call()
                print("OK")
            except vs.Error as error:
                print("ERROR", error)
        clip = core.std.BlankClip(width=32, height=24, format=vs.RGBS, length=10, color=[0.2, 0.4, 0.6])
    """)
    script = prelude + textwrap.dedent(body).format(**{k: repr(str(v)) for k, v in values.items()})
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def with_metadata(source, target, **changes):
    """A copy of the model file `source` whose metadata has `changes` at the top level."""
    metadata = model_file.read_metadata(source)
    metadata.update(changes)
    with model_file.without_torchscript_deprecation():
        module = torch.jit.load(str(source))
        torch.jit.save(module, str(target),
                       _extra_files={model_file.METADATA_ENTRY: json.dumps(metadata)})
    return target


def test_looped_clip_of_two_billion_frames(small_model):
    # std.Loop makes a clip of INT_MAX frames: n + radius and the border fold overflowed an int.
    result = run_script("""
        looped = core.std.Loop(clip)
        up = core.iedvr.Upscale(looped, model={model}, device_index=-1)
        for n in (3, looped.num_frames - 1, looped.num_frames - 2):
            assert up.get_frame(n).width == 128
        print("DONE", looped.num_frames)
    """, model=small_model)
    assert result.returncode == 0, result.stderr
    assert "DONE 2147483647" in result.stdout


@pytest.mark.parametrize("field, value, message", [
    ("num_frames", 0, '"num_frames" is 0; expected an integer from 1 to 15'),
    ("num_frames", 4, '"num_frames" is 4; expected an odd number'),
    ("num_frames", -1, '"num_frames" is -1; expected an integer from 1 to 15'),
    ("scale", 100000, '"scale" is 100000; expected an integer from 1 to 8'),
    ("scale", 0, '"scale" is 0; expected an integer from 1 to 8'),
    ("scale", -4, '"scale" is -4; expected an integer from 1 to 8'),
    ("scale", 10**40, '"scale" is ' + "1" + "0" * 23 + "...; expected"),
    ("format_version", 99, "format version 99; this vs-iedvr reads up to 1"),
])
def test_invalid_metadata_is_named(small_model, tmp_path, field, value, message):
    damaged = with_metadata(small_model, tmp_path / "damaged.pt", **{field: value})
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={damaged}, device_index=-1))
        check(lambda: core.iedvr.Upscale(clip, model={good}, device_index=-1).get_frame(0))
    """, damaged=damaged, good=small_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ERROR") and message in lines[0], lines
    assert str(damaged) in lines[0]
    assert lines[1] == "OK"


def test_directories_and_special_files_are_named(small_model, tmp_path):
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={folder}))
        check(lambda: core.iedvr.Upscale(clip, model="/dev/zero"))
        check(lambda: core.iedvr.Upscale(clip, model={missing}))
    """, folder=tmp_path, missing=tmp_path / "missing.pt")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "is a directory" in lines[0]
    assert "is not a regular file" in lines[1]
    assert "does not exist" in lines[2]


def test_small_tiles_get_a_fitting_default_overlap(small_model):
    # tilesize=8 alone used to complain about an overlap of 8 the user never gave.
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1, tilesize=8).get_frame(0))
        check(lambda: core.iedvr.Upscale(clip, model={model}, tilesize=16, overlap=8))
    """, model=small_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "OK"
    assert "overlap must be at least 0 and less than half" in lines[1] and "8x8" in lines[1]


@pytest.mark.parametrize("format", ["RGBS", "RGBH"])
def test_non_finite_input_is_an_error_naming_the_frame(small_model, format):
    result = run_script("""
        import numpy as np
        src = core.std.BlankClip(clip, format=getattr(vs, {format}))
        def poison(n, f):
            out = f.copy()
            if n == 6:
                np.asarray(out[1])[3, 4] = np.nan
            if n == 9:
                np.asarray(out[2])[0, 0] = np.inf
            return out
        bad = core.std.ModifyFrame(src, src, poison)
        up = core.iedvr.Upscale(bad, model={model}, device_index=-1)
        for n in (0, 4, 6, 9):
            check(lambda: up.get_frame(n))
    """, model=small_model, format=format)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "OK"  # frames 0..2 are outside every poisoned window
    assert "frame 4: input frame 6 holds NaN or infinite values (plane 1)" in lines[1]
    assert "frame 6: input frame 6 holds NaN" in lines[2]
    assert "frame 9: input frame" in lines[3] and "holds NaN or infinite values" in lines[3]


def test_scale_selects_or_checks_the_model(small_model):
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={model}, scale=4, device_index=-1).get_frame(0))
        check(lambda: core.iedvr.Upscale(clip, model={model}, scale=2))
        check(lambda: core.iedvr.Upscale(clip, scale=3))
        check(lambda: core.iedvr.Upscale(clip, scale=0))
        print(core.iedvr.Upscale(clip, scale=4, device_index=-1).width)
    """, model=small_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "OK"
    assert "scale=2 contradicts the model file" in lines[1] and "x4" in lines[1]
    assert "no default model for scale=3 is installed" in lines[2]
    assert "scale must be from 1 to 8, got 0" in lines[3]
    assert lines[4] == "128"  # the shipped x4 weights


def flip_a_weight_byte(source, target):
    """A copy of `source` with one byte of a stored tensor flipped in place, as a bad disk or a
    broken download would leave it (the zip's own records are untouched)."""
    shutil.copy(source, target)
    with zipfile.ZipFile(source) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(target, "r+b") as file:
        file.seek(record.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        position = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
        file.seek(position)
        byte = file.read(1)[0]
        file.seek(position)
        file.write(bytes([byte ^ 0x40]))
    return target


def test_damaged_weights_are_named_by_filter_and_loader(small_model, tmp_path):
    damaged = flip_a_weight_byte(small_model, tmp_path / "damaged.pt")
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={damaged}, device_index=-1))
        check(lambda: core.iedvr.Upscale(clip, model={good}, device_index=-1).get_frame(0))
    """, damaged=damaged, good=small_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "is damaged: its weights' checksum is" in lines[0] and str(damaged) in lines[0], lines
    assert lines[1] == "OK"
    with pytest.raises(model_file.ModelFileError, match="is damaged: its weights' checksum"):
        model_file.load_model(damaged)


def test_files_that_are_not_model_files_say_what_they_are(small_model, tmp_path):
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"model": {"weight": torch.zeros(2)}}, checkpoint)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all" * 100)
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={checkpoint}))
        check(lambda: core.iedvr.Upscale(clip, model={garbage}))
    """, checkpoint=checkpoint, garbage=garbage)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "is a PyTorch checkpoint (torch.save), not a model file: export it with `vs-iedvr export" in lines[0]
    assert "not a TorchScript archive" in lines[1] and "likelihood" not in lines[1], lines[1]


def test_the_models_own_error_text_reaches_the_frame_error(small_model, tmp_path):
    # A model that raises used to be reported as "The following operation failed in the
    # TorchScript interpreter.", its own message lost.
    class Refusing(torch.nn.Module):
        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            if frames.size(3) > 0:
                raise ValueError("this model refuses frames of this size")
            return frames

    metadata = model_file.read_metadata(small_model)
    metadata.pop("weights_crc32")
    refusing = tmp_path / "refusing.pt"
    with model_file.without_torchscript_deprecation():
        torch.jit.save(torch.jit.script(Refusing()), str(refusing),
                       _extra_files={model_file.METADATA_ENTRY: json.dumps(metadata)})
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1, tilesize=0).get_frame(0))
    """, model=refusing)
    assert result.returncode == 0, result.stderr
    assert "frame 0: inference failed: ValueError: this model refuses frames of this size" in result.stdout
