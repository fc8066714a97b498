"""`vs-iedvr bench` runs both pipelines end to end, reports the model's FLOPs as counted
independently through the whole network, and its ratio from the medians it prints; with
`--peer vs-mlrt-ov` it times vs-mlrt's OpenVINO backend on the same weights beside the plugin.

Every bench run starts a child process per pipeline (each imports torch and loads the model) and
measures the machine's peak, so the tests share runs: one of the shipped model (iedvr-m, whose
feature cache the FLOP counts must show), and one of the small network with `--no-reuse` and the
vs-mlrt peer, which the plugin-only checks read."""

import contextlib
import io
import re
import subprocess
import sys

import pytest

from small_network import export_small_network
from vs_iedvr import flops, model_file
from vs_iedvr.__main__ import main
from vs_iedvr.bench import PIPELINES, default_model

HEIGHT, WIDTH = 24, 32


def test_bench_prints_both_pipelines_flops_and_their_ratio(tmp_path):
    # No --model: the shipped weights, an iedvr-m (exporting an untrained one took longer than the
    # bench). A real process, as the README runs it.
    run = subprocess.run([sys.executable, "-P", "-m", "vs_iedvr", "bench", "--size", f"{WIDTH}x{HEIGHT}",
                          "--frames", "2", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert f"({default_model()})" in out

    whole, cached = map(float, re.search(r"([\d.]+) G for a whole window, ([\d.]+) G with", out).groups())
    # Counted apart from the bench, which runs the model file's traced network: the network of its
    # config on the meta device.
    metadata = model_file.read_metadata(default_model())
    assert metadata["architecture"] == "iedvr-m"
    counted = flops.flops_per_frame_of_config(metadata, HEIGHT, WIDTH)
    assert whole == pytest.approx(counted / 1e9, abs=0.05)
    # Caching skips the features of 4 of the 5 frames, and more than nothing besides.
    assert 0.5 * whole < cached < 0.8 * whole

    # The frames per second, not the seconds: at this size a median is a few hundredths of a second,
    # which two decimals round by up to 20%.
    fps = {name: float(re.search(rf"{re.escape(PIPELINES[name])}\s+[\d.]+\s+([\d.]+)\s", out).group(1))
           for name in ("plugin", "python")}
    ratio = float(re.search(r"plugin / Python callback: ([\d.]+)x", out).group(1))
    assert ratio == pytest.approx(fps["plugin"] / fps["python"], rel=0.02)
    # The plugin's memory plan, as the filter logged it.
    assert re.search(rf"^  Upscale: {WIDTH}x{HEIGHT} frames whole, features of 7 frames cached", out, re.M)


def has_vs_mlrt_ov() -> bool:
    try:
        import onnx  # noqa: F401
        import vapoursynth as vs
    except ImportError:
        return False
    return hasattr(vs.core, "ov")


@pytest.fixture(scope="module")
def plugin_only_run(tmp_path_factory):
    """What `vs-iedvr bench --pipelines plugin --no-reuse` prints for the small network, with
    `--peer vs-mlrt-ov` where vs-mlrt's OpenVINO backend is installed: run in this process through
    main(argv) (the pipelines still run in their own processes, and report to it through pipes)."""
    path = tmp_path_factory.mktemp("bench") / "small.pt"
    export_small_network(path)
    peer = ["--peer", "vs-mlrt-ov"] if has_vs_mlrt_ov() else []
    out, err = io.StringIO(), io.StringIO()
    # Elsewhere than the repository's root, whose source folder the children would import.
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        patch.chdir(path.parent)
        status = main(["bench", "--size", f"{WIDTH}x{HEIGHT}", "--frames", "1", "--device", "cpu",
                       "--model", str(path), "--pipelines", "plugin", "--no-reuse", *peer])
    assert status == 0, err.getvalue()[-2000:]
    return out.getvalue()


def test_bench_times_vs_mlrt_beside_the_plugin(plugin_only_run):
    if not has_vs_mlrt_ov():
        pytest.skip("vs-mlrt's OpenVINO backend is not installed (pip install vapoursynth-mlrt-ov onnx)")
    out = plugin_only_run
    assert "vs-mlrt-ov: the same weights as ONNX, 1 VapourSynth thread" in out
    # Frames per second, the column with three decimals: tiny frames take a few hundredths.
    rate = {name: float(re.search(rf"{re.escape(PIPELINES[name])}\s+[\d.]+\s+([\d.]+)\s", out).group(1))
            for name in ("plugin", "vs-mlrt-ov")}
    ratio = float(re.search(r"plugin / vs-mlrt-ov: ([\d.]+)x", out).group(1))
    assert ratio == pytest.approx(rate["plugin"] / rate["vs-mlrt-ov"], rel=0.02)
    # --pipelines plugin: the callback is not run.
    assert "Python callback" not in out


def test_no_reuse_times_windows_that_share_no_frame(plugin_only_run):
    out = plugin_only_run
    assert "every 5th frame (windows share no frame)" in out
    whole = float(re.search(r"([\d.]+) G for a whole window", out).group(1))
    # The plugin computes whole windows then: its rate is counted on the whole window's FLOPs
    # (frames per second, the column with three decimals, times GFLOP per frame).
    fps, rate = map(float, re.search(
        rf"{re.escape(PIPELINES['plugin'])}\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s", out).groups())
    assert rate == pytest.approx(whole * fps, rel=0.02)
    assert "Python callback" not in out
