"""`vs-iedvr bench` runs both pipelines end to end, reports the model's FLOPs as counted
independently through the whole network, and its ratio from the medians it prints; with
`--peer vs-mlrt-ov` it times vs-mlrt's OpenVINO backend on the same weights beside the plugin."""

import re
import subprocess
import sys

import pytest

from small_network import export_small_network
from vs_iedvr import model_file
from vs_iedvr.bench import PIPELINES
from vs_iedvr.network import build

HEIGHT, WIDTH = 24, 32


def test_bench_prints_both_pipelines_flops_and_their_ratio(tmp_path):
    path = tmp_path / "iedvr-m.pt"
    model_file.export_model(build("iedvr-m"), path, "iedvr-m")
    run = subprocess.run([sys.executable, "-P", "-m", "vs_iedvr", "bench", "--size", f"{WIDTH}x{HEIGHT}",
                          "--frames", "2", "--device", "cpu", "--model", str(path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout

    whole, cached = map(float, re.search(r"([\d.]+) G for a whole window, ([\d.]+) G with", out).groups())
    model, metadata = model_file.load_model(path)
    assert whole == pytest.approx(model_file.flops_per_frame(model, metadata, HEIGHT, WIDTH) / 1e9, abs=0.05)
    # Caching skips the features of 4 of the 5 frames, and more than nothing besides.
    assert 0.5 * whole < cached < 0.8 * whole

    seconds = {name: float(re.search(rf"{re.escape(PIPELINES[name])}\s+([\d.]+)\s", out).group(1))
               for name in ("plugin", "python")}
    ratio = float(re.search(r"plugin / Python callback: ([\d.]+)x", out).group(1))
    assert ratio == pytest.approx(seconds["python"] / seconds["plugin"], rel=0.1)
    # The plugin's memory plan, as the filter logged it.
    assert re.search(rf"^  Upscale: {WIDTH}x{HEIGHT} frames whole, features of 7 frames cached", out, re.M)


def test_bench_times_vs_mlrt_beside_the_plugin(tmp_path):
    pytest.importorskip("onnx")
    vs = pytest.importorskip("vapoursynth")
    if not hasattr(vs.core, "ov"):
        pytest.skip("vs-mlrt's OpenVINO backend is not installed (pip install vapoursynth-mlrt-ov)")
    path = tmp_path / "small.pt"
    export_small_network(path)
    run = subprocess.run([sys.executable, "-P", "-m", "vs_iedvr", "bench", "--size", f"{WIDTH}x{HEIGHT}",
                          "--frames", "1", "--device", "cpu", "--model", str(path),
                          "--pipelines", "plugin", "--peer", "vs-mlrt-ov"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "vs-mlrt-ov: the same weights as ONNX, 1 VapourSynth thread" in out
    # Frames per second, the column with three decimals: tiny frames take a few hundredths.
    rate = {name: float(re.search(rf"{re.escape(PIPELINES[name])}\s+[\d.]+\s+([\d.]+)\s", out).group(1))
            for name in ("plugin", "vs-mlrt-ov")}
    ratio = float(re.search(r"plugin / vs-mlrt-ov: ([\d.]+)x", out).group(1))
    assert ratio == pytest.approx(rate["plugin"] / rate["vs-mlrt-ov"], rel=0.02)
    assert "Python callback" not in out


def test_no_reuse_times_windows_that_share_no_frame(tmp_path):
    path = tmp_path / "small.pt"
    export_small_network(path)
    run = subprocess.run([sys.executable, "-P", "-m", "vs_iedvr", "bench", "--size", f"{WIDTH}x{HEIGHT}",
                          "--frames", "2", "--device", "cpu", "--model", str(path),
                          "--pipelines", "plugin", "--no-reuse"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "every 5th frame (windows share no frame)" in out
    whole = float(re.search(r"([\d.]+) G for a whole window", out).group(1))
    # The plugin computes whole windows then: its rate is counted on the whole window's FLOPs
    # (frames per second, the column with three decimals, times GFLOP per frame).
    fps, rate = map(float, re.search(
        rf"{re.escape(PIPELINES['plugin'])}\s+[\d.]+\s+([\d.]+)\s+([\d.]+)\s", out).groups())
    assert rate == pytest.approx(whole * fps, rel=0.02)
