"""The binary wheel, as a user gets it: `./run wheel` builds it (from the set-up's build objects:
only the libraries are linked again), a fresh virtual environment installs it with a plain
`pip install` (pip fetches torch and VapourSynth; compiling anything would fail), and there
`core.iedvr.Upscale` upscales real frames in Python without `vapoursynth config`, with the same
result as this checkout's install, and under vspipe after `vapoursynth config`.

IEDVR_WHEEL=path/to.whl tests that wheel instead of building one. Slow (minutes): most of it is
pip installing torch into the new environment. The environment is deleted afterwards.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import vapoursynth as vs

REPO = Path(__file__).resolve().parent.parent
core = vs.core

# The frames of input.npy ([frames, 3, height, width] float RGB) upscaled by the autoloaded
# plugin with the shipped weights, as the clip `up`.
UPSCALED = textwrap.dedent("""
    import numpy as np
    import vapoursynth as vs

    core = vs.core
    frames = np.load({input!r})
    clip = core.std.BlankClip(format=vs.RGBS, width=frames.shape[3], height=frames.shape[2],
                              length=len(frames))

    def fill(n, f):
        out = f.copy()
        for plane in range(3):
            np.asarray(out[plane])[:] = frames[n, plane]
        return out

    up = core.iedvr.Upscale(core.std.ModifyFrame(clip, clip, fill))
""")

# Runs in the new environment's Python: the frames into output.npy, and where the libraries
# came from.
SAVE_AND_REPORT = textwrap.dedent("""
    import json
    import sys

    np.save({output!r}, np.stack([np.stack([np.asarray(f[p]) for p in range(3)]) for f in up.frames()]))
    maps = open("/proc/self/maps").read()
    libraries = sorted({{line.split()[-1] for line in maps.splitlines()
                        if "libtorch_cpu.so" in line or "libiedvr" in line}})
    print(json.dumps({{"plugin": core.iedvr.plugin_path, "libraries": libraries,
                      "python_imported_torch": "torch" in sys.modules}}))
""")


def clean_environment(**extra) -> dict:
    """The environment without anything that could make the new venv see this checkout's
    packages or libraries."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "LD_PRELOAD",
                          "VAPOURSYNTH_EXTRA_PLUGIN_PATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def work():
    """A scratch folder outside pytest's kept tmp folders: the venv in it is several GB."""
    folder = Path(tempfile.mkdtemp(prefix="iedvr-wheel-test-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def wheel(work) -> Path:
    if os.environ.get("IEDVR_WHEEL"):
        return Path(os.environ["IEDVR_WHEEL"])
    out = work / "dist"
    result = subprocess.run([str(REPO / "run"), "wheel", str(out)], capture_output=True, text=True,
                            env={**os.environ, "IEDVR_VENV": sys.prefix}, timeout=1800)
    assert result.returncode == 0, result.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    assert result.stdout.strip().endswith(wheels[0].name)
    return wheels[0]


@pytest.fixture(scope="module")
def venv(work, wheel) -> Path:
    """A fresh venv of the Python that runs the tests, with the wheel installed by plain pip."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_environment())
    # A compiler that always fails: pip must not build anything. --no-compile: pip would otherwise
    # byte-compile the thousands of modules of torch and its dependencies (tens of seconds here),
    # which Python does by itself on import.
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                             "--no-compile", str(wheel)],
                            capture_output=True, text=True, timeout=1800,
                            env=clean_environment(CC="false", CXX="false"))
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3.*/site-packages"))


def test_wheel_metadata_and_contents(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        tags = archive.read(info.replace("METADATA", "WHEEL")).decode()
    assert re.search(r"^Name: vapoursynth-iedvr$", metadata, re.M)
    # Exactly the torch release of this checkout's install, which the libraries were built against.
    assert f"Requires-Dist: torch=={torch.__version__.split('+')[0]}\n" in metadata
    assert "Requires-Dist: vapoursynth" in metadata
    assert re.search(r"^Tag: py3-none-linux_x86_64$", tags, re.M), tags
    assert wheel.name.endswith("-py3-none-linux_x86_64.whl")
    for library in ("vapoursynth/plugins/iedvr/libiedvr_vs.so", "vs_iedvr/libiedvr_ops.so",
                    "vs_iedvr/libiedvr_engine.so", "vs_iedvr/models/default.pt",
                    "vs_iedvr/models/default-x2.pt", "vs_iedvr/models/codec.pt"):
        assert library in names
    # Only what the sources hold now: no module left over from an earlier build.
    packaged = {n for n in names if n.endswith(".py")}
    sources = {f"vs_iedvr/{p.name}" for p in (REPO / "vs_iedvr").glob("*.py")}
    sources |= {f"vs_iedvr/training/{p.name}" for p in (REPO / "training").glob("*.py")}
    assert packaged == sources


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils)")
def test_libraries_find_torch_through_their_runpath_only(venv):
    """RUNPATHs relative to the library ($ORIGIN), nothing pointing at the machine that built it."""
    packages = site_packages(venv)
    expected = {"vs_iedvr/libiedvr_ops.so": "$ORIGIN/../torch/lib",
                "vs_iedvr/libiedvr_engine.so": "$ORIGIN/../torch/lib"}
    for library, must_have in expected.items():
        dynamic = subprocess.run(["readelf", "-d", str(packages / library)], capture_output=True,
                                 text=True, check=True).stdout
        runpath = re.search(r"\((?:RUNPATH|RPATH)\).*\[(.*)\]", dynamic).group(1).split(":")
        assert must_have in runpath, runpath
        assert all(entry.startswith("$ORIGIN/") for entry in runpath), runpath


@pytest.fixture(scope="module")
def demo_frames(work) -> np.ndarray:
    """5 frames of demo/dog.mkv reduced to 48x32, saved to input.npy as float RGB [5, 3, 32, 48]."""
    clip = core.bs.VideoSource(str(REPO / "demo" / "dog.mkv"), cachemode=0)
    clip = core.resize.Bicubic(clip, 48, 32, format=vs.RGBS)[:5]
    frames = np.stack([np.stack([np.asarray(f[p]) for p in range(3)]) for f in clip.frames()])
    np.save(work / "input.npy", frames)
    return frames


@pytest.fixture(scope="module")
def upscaled_here(demo_frames, work) -> np.ndarray:
    """The same computation with this checkout's install (once for both tests that compare)."""
    namespace = {}
    exec(UPSCALED.format(input=str(work / "input.npy")), namespace)
    return np.stack([np.stack([np.asarray(f[p]) for p in range(3)]) for f in namespace["up"].frames()])


def test_upscale_in_python_without_vapoursynth_config(venv, work, demo_frames, upscaled_here):
    frames = demo_frames
    script = work / "upscale.py"
    script.write_text(UPSCALED.format(input=str(work / "input.npy"))
                      + SAVE_AND_REPORT.format(output=str(work / "output.npy")))
    # An empty configuration folder: no `vapoursynth config` was ever run for this venv.
    (work / "no-config").mkdir(exist_ok=True)
    result = subprocess.run([str(venv / "bin" / "python"), str(script)], capture_output=True,
                            text=True, timeout=600, cwd=work,
                            env=clean_environment(XDG_CONFIG_HOME=str(work / "no-config")))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    packages = str(site_packages(venv).resolve())
    assert report["plugin"].startswith(packages + "/vapoursynth/plugins/iedvr/"), report
    # The plugin loaded libtorch from the new venv's torch through the libraries' RUNPATH:
    # Python never imported torch.
    assert not report["python_imported_torch"]
    assert report["libraries"] and all(path.startswith(packages) for path in report["libraries"]), report
    assert any(path.endswith("/torch/lib/libtorch_cpu.so") for path in report["libraries"])

    out = np.load(work / "output.npy")
    assert out.shape == (5, 3, 128, 192) and np.isfinite(out).all()
    # The same libraries and torch: the same frames as this checkout's install.
    np.testing.assert_allclose(out, upscaled_here, rtol=0, atol=1e-5)
    # And an upscaled picture, not noise: the network adds detail to a smooth upscale, so the
    # frames stay close to torch's bicubic x4 of the input.
    reference = torch.nn.functional.interpolate(torch.from_numpy(frames), scale_factor=4,
                                                mode="bicubic", align_corners=False).numpy()
    assert 10 * np.log10(1 / float(np.mean((out - reference) ** 2))) > 25


def test_vspipe_needs_vapoursynth_config_then_runs(venv, work, upscaled_here):
    script = work / "upscale.vpy"
    script.write_text(UPSCALED.format(input=str(work / "input.npy")) + "up.set_output()\n")
    config = work / "config"
    config.mkdir(exist_ok=True)
    env = clean_environment(XDG_CONFIG_HOME=str(config))
    vspipe = str(venv / "bin" / "vspipe")

    before = subprocess.run([vspipe, str(script), "-"], capture_output=True, timeout=300, env=env)
    assert before.returncode != 0 and before.stdout == b""
    assert b"vapoursynth config" in before.stderr

    subprocess.run([str(venv / "bin" / "vapoursynth"), "config"], check=True, capture_output=True, env=env)
    # No container: the raw float32 planes, frame after frame, in vspipe's order for RGB: G, B, R.
    raw = subprocess.run([vspipe, str(script), "-"], capture_output=True, timeout=600, env=env)
    assert raw.returncode == 0, raw.stderr.decode()
    out = np.frombuffer(raw.stdout, np.float32).reshape(5, 3, 128, 192)[:, [2, 0, 1]]
    np.testing.assert_allclose(out, upscaled_here, rtol=0, atol=1e-5)


def test_the_command_line_tool_checks_the_operator(venv):
    result = subprocess.run([str(venv / "bin" / "vs-iedvr"), "selftest"], capture_output=True,
                            text=True, timeout=600, env=clean_environment())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "selftest passed" in result.stdout
