"""vs-iedvr bench: the plugin's speed through a real VapourSynth graph, next to the plain PyTorch
way (a Python per-frame callback, as the pure-Python VapourSynth wrappers do it), on the same
frames and model file, in one run; with `--peer vs-mlrt-ov`, also next to vs-mlrt's OpenVINO
backend (core.ov.Model) running the same weights exported to ONNX.

    vs-iedvr bench [--size 320x180] [--frames 6] [--device auto|cpu|cuda:N] [--fp16] [--model M]
                   [--peer vs-mlrt-ov] [--no-reuse]

Each pipeline runs in a fresh process, so that its peak memory is its own. Per pipeline: the
median time per output frame over `--frames` frames requested in order (after one warm-up frame),
the FLOPs it executes per output frame (the plugin computes each input frame's features once,
the callback recomputes them in all 2N+1 windows), the rate that makes, and the fraction of this
machine's measured peak in the same precision (the best of a matrix multiply and a wide
convolution). `--no-reuse` requests frames that share no window (every 2N+1-th), so that the
plugin, too, computes every window whole: its speed without the feature cache.

vs-mlrt runs as its users get the most from it on a CPU: one VapourSynth thread
(core.num_threads = 1: OpenVINO spreads each inference over every core itself) and OpenVINO's
default precision for this CPU (bfloat16 where the CPU has AVX512-BF16 or AMX, whatever --fp16
says), fed by vs_iedvr.mlrt's five shifted clips; like the callback, it computes whole windows.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import clips, model_file, network, onnx_export, precision, weights_file
from .flops import count_flops
from .arguments import positive_int

PIPELINES = {"plugin": "core.iedvr.Upscale (C++, cached features)",
             "python": "Python callback (std.ModifyFrame + torch)",
             "vs-mlrt-ov": "vs-mlrt core.ov.Model (ONNX, OpenVINO)"}
# Other VapourSynth plugins that `--peer` runs beside ours.
PEERS = ("vs-mlrt-ov",)


def source_clip(width: int, height: int, length: int):
    """Smooth random RGBS frames (made once; the source costs nothing next to the network)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(length, 3, height // 8 + 2, width // 8 + 2, generator=generator)
    frames = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic",
                                             align_corners=False).clamp(0, 1).numpy()
    return clips.clip_of(frames)


def shifted(clip, k: int):
    """Frame n of the result is frame n + k of `clip`, clamped to its ends."""
    if k > 0:
        return clip[k:] + clip[-1] * k
    if k < 0:
        return clip[0] * -k + clip[:k]
    return clip


def python_pipeline(clip, model_path: str, device: torch.device, half: bool):
    """The per-frame callback of the pure-Python wrappers: gather the window's frames, convert
    them to a tensor, run the network on the whole window, copy the result into a new frame."""
    import vapoursynth as vs

    model, metadata = model_file.load_model(model_path, device)
    dtype = precision.sixteen_bit(device) if half else torch.float32
    model = model.to(dtype)
    scale, radius = metadata["scale"], metadata["num_frames"] // 2
    blank = vs.core.std.BlankClip(clip, width=clip.width * scale, height=clip.height * scale)
    neighbours = [shifted(clip, k) for k in range(-radius, radius + 1)]

    def upscale(n, f):
        window = np.stack([np.stack([np.asarray(frame[p]) for p in range(3)]) for frame in f[1:]])
        frames = torch.from_numpy(window)[None].to(device, dtype)
        with torch.inference_mode():
            result = model(frames)[0].float().cpu().numpy()
        out = f[0].copy()
        for plane in range(3):
            np.asarray(out[plane])[:] = result[plane]
        return out

    return vs.core.std.ModifyFrame(blank, [blank, *neighbours], upscale)


def run_pipeline(args) -> dict:
    """In the child process: build one pipeline, time it, report as JSON."""
    import vapoursynth as vs

    device = torch.device(args.device)
    # Longer than the timed frames: the callback's shifted clips need more frames than a window.
    clip = source_clip(args.width, args.height, (args.frames + 1) * args.stride + 8)
    plans = []
    if args.pipeline == "plugin":
        # The memory plan the filter logs before its first frame (whole frames or tiles, cache).
        vs.core.add_log_handler(lambda kind, text: plans.append(text) if text.startswith("Upscale:") else None)
        device_index = (device.index or 0) if device.type == "cuda" else -1
        out = vs.core.iedvr.Upscale(clip, model=args.model, device_index=device_index,
                                    fp16=int(args.fp16))
    elif args.pipeline == "vs-mlrt-ov":
        from . import mlrt

        vs.core.num_threads = 1
        out = mlrt.upscale(clip, args.model, backend="ov", config=openvino_config(args.fp16))
    else:
        out = python_pipeline(clip, args.model, device, args.fp16)
    out.get_frame(0)  # warm-up: loading, first allocations, the first window's features
    times = []
    for n in range(args.stride, (args.frames + 1) * args.stride, args.stride):
        start = time.perf_counter()
        out.get_frame(n)
        times.append(time.perf_counter() - start)
    result = {"median_s": statistics.median(times), "times_s": times,
              "peak_rss_bytes": peak_rss_bytes(), "plan": plans[0] if plans else None}
    if device.type == "cuda":
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def peak_rss_bytes() -> int:
    """This process's peak resident memory. Not getrusage(): after fork and exec, its ru_maxrss
    still holds the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def compute_peak(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """The machine's practical peak: the best median rate of square matrix multiplies and of a
    wide 3x3 convolution (a GEMM in disguise, and on CPUs where MKL's GEMM does not use every
    vector unit, oneDNN's convolution does)."""
    rates = []
    with torch.inference_mode():
        # 4096 adds nothing on a CPU (it ties 2048) but seconds to every run.
        for size in (1024, 2048, 4096) if device.type == "cuda" else (1024, 2048):
            a = torch.randn(size, size, device=device).to(dtype)
            b = torch.randn(size, size, device=device).to(dtype)
            rates.append(2 * size**3 / median_time(lambda: torch.mm(a, b), device, repeats))
        channels, side = 256, 128
        x = torch.randn(1, channels, side, side, device=device).to(dtype)
        w = torch.randn(channels, channels, 3, 3, device=device).to(dtype)
        x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
        rates.append(2 * 9 * channels**2 * side**2 /
                     median_time(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, repeats))
    return max(rates)


def median_time(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def flops_per_output_frame(model_path: str, width: int, height: int,
                           device: torch.device) -> tuple[int, int]:
    """(whole window through the network, one frame's features + one window's second half),
    counted by running the model once on `device`."""
    model, metadata = model_file.load_model(model_path, device)
    frames = torch.zeros(1, metadata["num_frames"], 3, height, width, device=device)
    whole = count_flops(lambda: model(frames))
    features = count_flops(lambda: model.features(frames[0, :1]))
    levels = [level.unflatten(0, (1, -1)).expand(1, frames.shape[1], *level.shape[1:]).contiguous()
              for level in model.features(frames[0, :1])]
    upscale = count_flops(lambda: model.upscale(*levels, frames[:, 0]))
    return whole, features + upscale


def openvino_config(fp16: bool):
    """vs-mlrt's `config` for OpenVINO: the plugin's precision, bfloat16 or float32, so that both
    compute alike. Left to itself OpenVINO picks bfloat16 from the CPU's flags, also where the
    plugin runs float32 (--no-fp16, or IEDVR_CPU_BFLOAT16=0), and under ONEDNN_MAX_CPU_ISA=AVX2,
    which its oneDNN reads too, that choice fails ("object is not initialized")."""
    hint = "bf16" if fp16 else "f32"
    return lambda: {"INFERENCE_PRECISION_HINT": hint}


def default_model() -> Path | None:
    path = Path(__file__).parent / "models" / "default.pt"
    return path if path.exists() else None


def bench_device(text: str) -> torch.device:
    """--device as a torch.device: auto is CUDA where torch sees a GPU, else the CPU."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: torch sees {torch.cuda.device_count()} CUDA "
                         "device(s)" + ("" if torch.cuda.is_available() else
                                        " (no GPU, or a torch built without CUDA)"))
    return device


def bench(args) -> int:
    device = bench_device(args.device)
    fp16 = args.fp16 if args.fp16 is not None else precision.default_fp16(device)
    width, height = args.size
    with tempfile.TemporaryDirectory() as folder:
        model = args.model or default_model()
        if model is None:
            model = Path(folder) / "iedvr-m.pt"
            model_file.export_model(network.build("iedvr-m"), model, "iedvr-m")
        metadata = model_file.read_metadata(model)
        pipelines = list(args.pipelines) + [peer for peer in args.peer if peer not in args.pipelines]
        paths = {name: str(model) for name in pipelines}
        if "vs-mlrt-ov" in pipelines:
            if device.type != "cpu":
                raise ValueError("--peer vs-mlrt-ov runs on the CPU; compare it with --device cpu")
            paths["vs-mlrt-ov"] = str(Path(folder) / "model-openvino.onnx")
            net, source = weights_file.network_from_model_file(model)
            onnx_export.export_onnx(net, paths["vs-mlrt-ov"], "openvino",
                                    source["architecture"], weights=source["weights"])
        whole, cached = flops_per_output_frame(str(model), width, height, device)
        dtype = precision.sixteen_bit(device) if fp16 else torch.float32
        peak = compute_peak(device, dtype)

        # With --no-reuse, frames one window apart: no two windows share a frame.
        stride = metadata["num_frames"] if args.no_reuse else 1
        print(f"vs-iedvr bench: {metadata['architecture']} x{metadata['scale']} ({model}), "
              f"{width}x{height} -> {width * metadata['scale']}x{height * metadata['scale']}, "
              f"{args.frames} frames after 1 warm-up, {device} {str(dtype)[6:]}"
              + (f", every {stride}th frame (windows share no frame)" if args.no_reuse else ""))
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"torch {torch.__version__} with {torch.get_num_threads()} threads"
              + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
        print(f"model FLOPs per output frame: {whole / 1e9:.1f} G for a whole window, "
              f"{cached / 1e9:.1f} G with each frame's features computed once")
        print(f"measured peak ({str(dtype)[6:]}, best of matrix multiply and 3x3 convolution): "
              f"{peak / 1e9:.1f} GFLOP/s")
        if "vs-mlrt-ov" in pipelines:
            print(f"vs-mlrt-ov: the same weights as ONNX, 1 VapourSynth thread, precision "
                  f"{'bf16' if fp16 else 'f32'} (the peak and its fraction are for {str(dtype)[6:]})")
        print(f"{'pipeline':44s} {'s/frame':>8s} {'frames/s':>9s} {'GFLOP/s':>8s} {'of peak':>8s} {'peak memory':>12s}")
        results = {}
        for name in pipelines:
            command = [sys.executable, "-m", "vs_iedvr.bench", "--child", name, "--model", paths[name],
                       "--width", str(width), "--height", str(height), "--frames", str(args.frames),
                       "--device", str(device), "--stride", str(stride)] + (["--fp16"] if fp16 else [])
            child = subprocess.run(command, capture_output=True, text=True)
            if child.returncode != 0:
                if getattr(args, "debug", False) or os.environ.get("IEDVR_DEBUG") == "1":
                    print(child.stderr, file=sys.stderr, end="")  # the child's traceback
                # Its last line: the exception that ended it.
                lines = child.stderr.strip().splitlines() or [f"exit status {child.returncode}"]
                raise RuntimeError(f"the {name} pipeline failed: {lines[-1]}")
            result = results[name] = json.loads(child.stdout.strip().splitlines()[-1])
            # The others compute whole windows, and so does the plugin when no window shares a frame.
            flops = cached if name == "plugin" and not args.no_reuse else whole
            rate = flops / result["median_s"]
            memory = result.get("peak_cuda_bytes", result["peak_rss_bytes"])
            print(f"{PIPELINES[name]:44s} {result['median_s']:8.2f} {1 / result['median_s']:9.3f} "
                  f"{rate / 1e9:8.1f} {rate / peak:8.0%} {memory / 2**30:8.2f} GiB"
                  + (" (CUDA)" if "peak_cuda_bytes" in result else " (RSS)"))
            if result.get("plan"):
                print(f"  {result['plan']}")
        for name, label in (("python", "Python callback"), ("vs-mlrt-ov", "vs-mlrt-ov")):
            if "plugin" in results and name in results:
                ratio = results[name]["median_s"] / results["plugin"]["median_s"]
                print(f"plugin / {label}: {ratio:.2f}x the frames per second")
    return 0


def add_arguments(parser: argparse.ArgumentParser, parse_size) -> None:
    parser.add_argument("--size", type=parse_size, default=(320, 180),
                        help="input frame size WIDTHxHEIGHT (default 320x180)")
    parser.add_argument("--frames", type=positive_int, default=6,
                        help="timed output frames (default 6)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:N")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                        help="16-bit inference: float16 on CUDA, bfloat16 on the CPU "
                        "(default: the plugin's, on CUDA and CPUs with AVX512-BF16 or AMX)")
    parser.add_argument("--model", help="model file (default: the installed default model, else "
                        "an untrained iedvr-m, which has the same cost)")
    parser.add_argument("--pipelines", nargs="+", choices=sorted(PIPELINES), default=["plugin", "python"])
    parser.add_argument("--peer", nargs="+", choices=PEERS, default=[],
                        help="also time another plugin on the same frames and weights: vs-mlrt-ov "
                        "(vs-mlrt's OpenVINO backend, pip install vapoursynth-mlrt-ov onnx)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="request frames that share no window, so that the plugin's feature "
                        "cache cannot help (its speed per window)")


def child_main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", dest="pipeline", choices=sorted(PIPELINES), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--device", required=True)
    parser.add_argument("--fp16", action="store_true")
    print(json.dumps(run_pipeline(parser.parse_args())))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
