"""Inputs that used to kill the process (regressions of issue 13): each test runs its cases in a
fresh subprocess, so that a crash fails the test instead of the test runner, and each case must end
in a vapoursynth.Error (or a frame) with the process still working."""

import json
import os
import re
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


INVALID_METADATA = [
    ("num_frames", 0, '"num_frames" is 0; expected an integer from 1 to 15'),
    ("num_frames", 4, '"num_frames" is 4; expected an odd number'),
    ("num_frames", -1, '"num_frames" is -1; expected an integer from 1 to 15'),
    ("scale", 100000, '"scale" is 100000; expected an integer from 1 to 8'),
    ("scale", 0, '"scale" is 0; expected an integer from 1 to 8'),
    ("scale", -4, '"scale" is -4; expected an integer from 1 to 8'),
    ("scale", 10**40, '"scale" is ' + "1" + "0" * 23 + "...; expected"),
    ("format_version", 99, "format version 99; this vs-iedvr reads up to 1"),
]


def test_invalid_metadata_is_named(small_model, tmp_path):
    # Every case in one process (each used to start its own, seconds apiece): the good model
    # still works after all of them.
    damaged = [with_metadata(small_model, tmp_path / f"damaged-{i}.pt", **{field: value})
               for i, (field, value, _) in enumerate(INVALID_METADATA)]
    result = run_script("""
        import json
        for path in json.loads({damaged}):
            check(lambda: core.iedvr.Upscale(clip, model=path, device_index=-1))
        check(lambda: core.iedvr.Upscale(clip, model={good}, device_index=-1).get_frame(0))
    """, damaged=json.dumps([str(p) for p in damaged]), good=small_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(INVALID_METADATA) + 1, lines
    for path, (field, value, message), line in zip(damaged, INVALID_METADATA, lines):
        assert line.startswith("ERROR") and message in line, (field, value, line)
        assert str(path) in line, line
    assert lines[-1] == "OK"


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


def test_non_finite_input_is_an_error_naming_the_frame(small_model):
    # Both formats in one process.
    result = run_script("""
        import numpy as np
        for format in (vs.RGBS, vs.RGBH):
            src = core.std.BlankClip(clip, format=format)
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
    """, model=small_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8, lines
    for format, four in (("RGBS", lines[:4]), ("RGBH", lines[4:])):
        assert four[0] == "OK", (format, four)  # frames 0..2 are outside every poisoned window
        assert "frame 4: input frame 6 holds NaN or infinite values (plane 1)" in four[1], (format, four)
        assert "frame 6: input frame 6 holds NaN" in four[2], (format, four)
        assert "frame 9: input frame" in four[3] and "holds NaN or infinite values" in four[3], (format, four)


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
    # The Python loader checks the archive's own CRC-32s first, which name the damaged entry.
    with pytest.raises(model_file.ModelFileError, match=r"is damaged: its entry .*/data/\d+ fails its CRC-32"):
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
    # It passes the load's check (a 16x16 window) and the memory plan's trial windows (16 and 48
    # pixels high), and raises on the clip's 32x24 frames.
    class Refusing(torch.nn.Module):
        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            if frames.size(3) == 24:
                raise ValueError("this model refuses frames of this size")
            return torch.nn.functional.interpolate(frames.mean(1), scale_factor=4.0)

    metadata = model_file.read_metadata(small_model)
    assert metadata["scale"] == 4
    refusing = tmp_path / "refusing.pt"
    with model_file.without_torchscript_deprecation():
        scripted = torch.jit.script(Refusing())
        metadata["weights_crc32"] = model_file.weights_checksum(scripted)  # of no weights
        torch.jit.save(scripted, str(refusing),
                       _extra_files={model_file.METADATA_ENTRY: json.dumps(metadata)})
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1, tilesize=0).get_frame(0))
    """, model=refusing)
    assert result.returncode == 0, result.stderr
    assert "frame 0: inference failed: ValueError: this model refuses frames of this size" in result.stdout


def test_huge_overlaps_are_refused_at_creation(small_model):
    # 2 * overlap overflowed an int: 2**30 passed the check and the first frame grew memory
    # without bound.
    overlaps = [2**30, 2**31 - 1, 2**40, 2**62]
    result = run_script("""
        import json
        for overlap in json.loads({overlaps}):
            check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1, tilesize=16,
                                             overlap=overlap))
    """, model=small_model, overlaps=json.dumps(overlaps))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(overlaps)
    for overlap, line in zip(overlaps, lines):
        assert line.startswith("ERROR Upscale: overlap must be at least 0 and less than half"), line
        assert f"got {overlap}x{overlap} for tiles of 16x16" in line


def export_with(path, change) -> None:
    """The small network with `change(network)` applied to its weights, exported with a correct
    checksum (as a training run that diverged would export it)."""
    torch.manual_seed(0)
    from small_network import SMALL
    from vs_iedvr.network import IEDVR
    network = IEDVR(SMALL).eval()
    with torch.no_grad():
        change(network)
    model_file.export_model(network, path, "small")


def test_weights_holding_nan_are_refused_when_the_filter_is_created(tmp_path):
    path = tmp_path / "diverged.pt"
    export_with(path, lambda network: network.conv_hr.weight[0, 0, 1, 1].fill_(float("nan")))
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1))
    """, model=path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ERROR Upscale: cannot load the model {path}: its weights hold "
                                    "NaN or infinite values (in network.conv_hr.weight)"), result.stdout
    assert "diverged" in result.stdout


def test_a_model_whose_output_is_not_finite_fails_the_frame_naming_the_model(tmp_path):
    # Finite weights, but so large that the output overflows to infinity (and then NaN).
    path = tmp_path / "overflowing.pt"
    export_with(path, lambda network: network.conv_last.weight.fill_(3e38))
    result = run_script("""
        for fp16 in (0, 1):
            up = core.iedvr.Upscale(clip, model={model}, device_index=-1, fp16=fp16)
            check(lambda: up.get_frame(3))
            tiled = core.iedvr.Upscale(clip, model={model}, device_index=-1, fp16=fp16, tilesize=16)
            check(lambda: tiled.get_frame(3))
    """, model=path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    for fp16, line in zip((0, 0, 1, 1), lines):
        assert line.startswith(f"ERROR Upscale: frame 3: the model {path} returned NaN or infinite "
                               "values: its weights are probably damaged or from a training run "
                               "that diverged"), line
        assert ("fp16=0" in line) == bool(fp16), line


def test_huge_finite_input_is_clamped_to_the_range_the_network_takes(small_model):
    # Such a pixel used to turn the whole upscaled frame into NaN. Oracle: the same frames with
    # the value clamped to 2 (the top of [-1, 2]) by std.Expr before the filter. Both formats in
    # one process: the largest finite value of each.
    result = run_script("""
        import numpy as np
        for format, huge in ((vs.RGBS, 3.4e38), (vs.RGBH, 65504.0)):
            src = core.std.BlankClip(clip, format=format)
            def poison(n, f):
                out = f.copy()
                np.asarray(out[1])[3:9, 4:12] = huge
                np.asarray(out[2])[10, 20] = -huge
                return out
            bad = core.std.ModifyFrame(src, src, poison)
            clamped = core.std.Expr(bad, "x -1 max 2 min")
            for fp16 in (0, 1):
                a = core.iedvr.Upscale(bad, model={model}, device_index=-1, fp16=fp16).get_frame(5)
                b = core.iedvr.Upscale(clamped, model={model}, device_index=-1, fp16=fp16).get_frame(5)
                planes_a = [np.asarray(a[p]).astype(np.float32) for p in range(3)]
                planes_b = [np.asarray(b[p]).astype(np.float32) for p in range(3)]
                print(format.name, fp16, all(np.isfinite(p).all() for p in planes_a),
                      max(float(np.abs(x - y).max()) for x, y in zip(planes_a, planes_b)))
    """, model=small_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["RGBS", "0"], ["RGBS", "1"], ["RGBH", "0"],
                                                   ["RGBH", "1"]], result.stdout
    for line in lines:
        _, _, finite, difference = line.split()
        assert finite == "True" and float(difference) == 0.0, result.stdout


def test_metadata_that_the_network_contradicts_is_refused(small_model, tmp_path):
    # A 5-frame network under metadata that says 7 used to load and return frames, silently wrong.
    cases = [
        ({"num_frames": 7}, "its metadata says 7 input frames and scale 4, but its network does "
                            "not read frame 7 of the 7"),
        ({"num_frames": 15}, "its metadata says 15 input frames and scale 4, but its network"),
        ({"num_frames": 3}, "its metadata says 3 input frames and scale 4, but its network fails "
                            "on such a window"),
        ({"scale": 2}, "its metadata says 5 input frames and scale 2, but its network upscales "
                       "16x16 input to 64x64"),
    ]
    paths = [with_metadata(small_model, tmp_path / f"contradicted-{i}.pt", **changes)
             for i, (changes, _) in enumerate(cases)]
    result = run_script("""
        import json
        for path in json.loads({paths}):
            check(lambda: core.iedvr.Upscale(clip, model=path, device_index=-1))
    """, paths=json.dumps([str(p) for p in paths]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(cases)
    for path, (_, message), line in zip(paths, cases, lines):
        assert line.startswith(f"ERROR Upscale: cannot load the model {path}: {message}"), line


# -- issue 35: nothing lost, nothing silently changed ----------------------------------------------

@pytest.mark.parametrize("checksum, expected", [
    (12345, '"weights_crc32" is 12345; expected'),  # the filter loaded it unchecked
    (None, '"weights_crc32" is missing; expected'),  # the filter and the loader: unchecked
    ("1d346f5", '"weights_crc32" is "1d346f5"; expected'),
], ids=["integer", "missing", "seven-digits"])
def test_a_checksum_of_the_wrong_type_or_none_is_refused(small_model, tmp_path, checksum, expected):
    metadata = model_file.read_metadata(small_model)
    metadata.pop("weights_crc32")
    if checksum is not None:
        metadata["weights_crc32"] = checksum
    target = tmp_path / "target.pt"
    with model_file.without_torchscript_deprecation():
        torch.jit.save(torch.jit.load(str(small_model)), str(target),
                       _extra_files={model_file.METADATA_ENTRY: json.dumps(metadata)})
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1))
    """, model=target)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout and str(target) in result.stdout, result.stdout
    with pytest.raises(model_file.ModelFileError, match=re.escape(expected)):
        model_file.load_model(target)


def test_all_zero_weights_are_named_as_such(tmp_path):
    # They were refused as a network "made for fewer frames", which it is not.
    zero = tmp_path / "zero.pt"
    export_with(zero, lambda net: [p.data.zero_() for p in net.parameters()])
    result = run_script("""
        check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1))
    """, model=zero)
    assert result.returncode == 0, result.stderr
    expected = "output depends on no frame but the centre one of its 5 input frames"
    assert expected in result.stdout and "all zero" in result.stdout, result.stdout
    with pytest.raises(model_file.ModelFileError, match=expected):
        model_file.load_model(zero)


def test_flags_device_index_and_model_take_only_what_they_mean(small_model):
    # Flags took any integer (2, -1, 2**62 as True); device_index=2**31 was reported as
    # 2147483647; a NUL in model= cut the path short and loaded the shipped default.
    result = run_script("""
        for name in ("fp16", "scene_change"):
            for value in (2, -1, 2**62):
                check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1, **{{name: value}}))
        check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=2**31))
        check(lambda: core.iedvr.Upscale(clip, model="default\\x00/etc/passwd", device_index=-1))
        check(lambda: core.iedvr.Upscale(clip, model={model}, device_index=-1, fp16=False, scene_change=True))
    """, model=small_model)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:6] == [f"ERROR Upscale: {name} must be 0 or 1 (False or True), got {value}"
                         for name in ("fp16", "scene_change") for value in (2, -1, 2**62)], lines
    assert lines[6] == ("ERROR Upscale: device_index must be -1 (CPU) or a CUDA device index >= 0, "
                        "got 2147483648")
    assert lines[7] == "ERROR Upscale: model must not contain a NUL character (it would cut the path short there)"
    assert lines[8] == "OK"


@pytest.mark.parametrize("value", ["-5", "0", "abc", "inf", "nan", "64MB"])
def test_a_bad_memory_limit_is_refused_when_the_filter_is_created(small_model, value):
    # It was read at the first frame (IEDVR_MAX_MEMORY_MB=-5 made the filter, then its frames
    # failed); "inf" was a budget.
    script = textwrap.dedent(f"""
        import vapoursynth as vs
        core = vs.core
        clip = core.std.BlankClip(width=32, height=24, format=vs.RGBS, length=10)
        try:
            core.iedvr.Upscale(clip, model={str(small_model)!r}, device_index=-1)
            print("created")
        except vs.Error as error:
            print("ERROR", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, IEDVR_MAX_MEMORY_MB=value))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("ERROR Upscale: IEDVR_MAX_MEMORY_MB must be a positive number "
                                     f"of megabytes, got \"{value}\"")


def test_measuring_for_the_memory_plan_stays_within_a_small_budget():
    # With IEDVR_MAX_MEMORY_MB=64 the plan's trial windows alone (48x96, the default model in
    # float32) took 141 MiB above the process's size once the filter was made. The frames here are
    # 16x16, so that the peak is the measurement's.
    script = textwrap.dedent("""
        import vapoursynth as vs
        core = vs.core
        def resident(field):
            return next(int(line.split()[1]) for line in open("/proc/self/status")
                        if line.startswith(field)) / 1024
        clip = core.std.BlankClip(width=16, height=16, format=vs.RGBS, length=10, color=[0.3, 0.5, 0.7])
        up = core.iedvr.Upscale(clip, device_index=-1, fp16=False)
        base = resident("VmRSS")
        with open("/proc/self/clear_refs", "w") as file:  # the peak counts from here
            file.write("5")
        up.get_frame(0)
        print(resident("VmHWM") - base)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, IEDVR_MAX_MEMORY_MB="64"))
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) <= 64, f"{float(result.stdout):.1f} MiB above the base"
