"""PSNR/SSIM (and on request VMAF) of a model file on clips of ground-truth frames, next to bicubic
upscaling (the BasicSR protocol: BT.601 Y and RGB, optional border crop, averaged per clip then
over clips; VMAF through ffmpeg's libvmaf on the same 8-bit frames, see vmaf.py).

The low-resolution input is made from the ground truth with the training degradation, then, for a
compressed condition ("crf28"), the whole low-resolution clip is encoded with x264 at that CRF in
YUV 4:2:0 and decoded, as a user's source would be (bicubic upscales the same compressed frames);
frames at the clip's ends get their missing neighbours by reflection (EDVR's evaluation, and the
plugin's default).
"""

import json
import re
from pathlib import Path

import torch

from vs_iedvr import model_file
from vs_iedvr.clips import clip_of, frames_of
from vs_iedvr.precision import sixteen_bit
from vs_iedvr.weights_file import finite_or_none
from vs_iedvr.window import fold

from .codec import compress
from .data import VIDEO_SUFFIXES, decode_video, degrade, frame_folders, read_image
from .degradations import bicubic_upscale
from .metrics import average_per_clip, psnr, ssim
from .vmaf import check_libvmaf, ffmpeg_executable, vmaf

METRICS = ("psnr", "ssim", "vmaf")
DEFAULT_METRICS = ("psnr", "ssim")
# What each metric reports: PSNR and SSIM on Y and on RGB, VMAF once (it scores luma).
SCORES_OF = {"psnr": ("psnr_y", "psnr_rgb"), "ssim": ("ssim_y", "ssim_rgb"), "vmaf": ("vmaf",)}


def quantise(frames: torch.Tensor) -> torch.Tensor:
    """8-bit frames, as written to a video file (and as BasicSR scores them)."""
    return (frames.clamp(0, 1) * 255).round() / 255


def load_clip(frames: tuple[Path, ...], multiple: int, max_frames: int = 0) -> torch.Tensor:
    """Ground truth [N, 3, H, W] in [0, 1], cropped to a multiple of `multiple` (the scale, or
    twice the scale where the low-resolution frames go through 4:2:0)."""
    paths = frames[:max_frames] if max_frames else frames
    high = torch.stack([read_image(p) for p in paths]).float() / 255
    height, width = high.shape[-2] // multiple * multiple, high.shape[-1] // multiple * multiple
    return high[..., :height, :width]


@torch.no_grad()
def upscale_clip(model, low: torch.Tensor, num_frames: int,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    half = num_frames // 2
    outputs = []
    for n in range(low.shape[0]):
        window = low[[fold(n + d, 0, low.shape[0] - 1) for d in range(-half, half + 1)]]
        outputs.append(model(window[None].to(dtype))[0].float().clamp(0, 1))
    return torch.stack(outputs)


def upscale_clip_with_plugin(model_path, low: torch.Tensor, fp16: bool) -> torch.Tensor:
    """The clip through core.iedvr.Upscale on the CPU, as a user's script runs it: the C++ engine
    with its feature cache and CPU graph rewrites, the same reflected borders."""
    import vapoursynth as vs

    clip = clip_of(low.numpy())
    upscaled = vs.core.iedvr.Upscale(clip, model=str(model_path), device_index=-1, fp16=int(fp16))
    return torch.from_numpy(frames_of(upscaled)).clamp(0, 1)


def codec_crf(condition: str) -> int | None:
    """None for "clean", the CRF of "crf28"; anything else is refused."""
    if condition == "clean":
        return None
    match = re.fullmatch(r"crf(\d+)", condition)
    if not match or int(match[1]) > 51:
        raise ValueError(f"--conditions: expected clean or crfN with N an x264 CRF from 0 to 51, "
                         f"got {condition!r}")
    return int(match[1])


def check_metrics(metrics) -> None:
    """Refuses an unknown or empty metric list, and VMAF without an ffmpeg that has libvmaf."""
    unknown = [metric for metric in metrics if metric not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"--metrics: expected one or more of {', '.join(METRICS)}, got "
                         f"{' '.join(map(str, metrics)) or 'none'}")
    if "vmaf" in metrics:
        check_libvmaf(ffmpeg_executable())


def crop(frames: torch.Tensor, border: int) -> torch.Tensor:
    """The frames without `border` pixels on each side (--crop-border, as PSNR and SSIM crop)."""
    height, width = frames.shape[-2:]
    if border < 0 or 2 * border >= min(height, width):
        raise ValueError(f"--crop-border: expected 0 or more pixels, fewer than half of "
                         f"{width}x{height}, got {border}")
    if border == 0:
        return frames
    return frames[..., border:frames.shape[-2] - border, border:frames.shape[-1] - border]


def evaluate(model_path, clip_roots: list[str], degradation: str = "BI", crop_border: int = 0,
             max_frames: int = 0, cache: str = "runs/decoded", fp16: bool = False,
             plugin: bool = False, condition: str = "clean",
             metrics: tuple[str, ...] = DEFAULT_METRICS) -> dict:
    """Scores per clip and overall for the model and for bicubic: {method: {score: (per_clip,
    mean)}} with scores psnr_y and psnr_rgb for the metric "psnr", ssim_y and ssim_rgb for "ssim",
    vmaf for "vmaf" (ffmpeg's libvmaf on the whole clip, the frames in order). Clips are folders
    of frames or video files (decoded once into `cache`). fp16: run the model in 16-bit as the
    plugin's fp16=1 does on the CPU (bfloat16 weights and frames). plugin: run it through the
    VapourSynth plugin instead of the eager network. condition: "clean", or "crfN" for sources
    compressed with x264 at CRF N."""
    crf = codec_crf(condition)
    check_metrics(metrics)
    if max_frames < 0:  # a negative slice would drop the clip's last frames instead
        raise ValueError(f"--max-frames: expected 0 (every frame) or more, got {max_frames}")
    metadata = model_file.read_metadata(model_path)
    scale, num_frames = metadata["scale"], metadata["num_frames"]
    if plugin:  # the plugin loads the file itself
        def upscale(low):
            return upscale_clip_with_plugin(model_path, low, fp16)
    else:
        dtype = sixteen_bit(torch.device("cpu")) if fp16 else torch.float32
        model = model_file.load_model(model_path)[0].to(dtype)

        def upscale(low):
            return upscale_clip(model, low, num_frames, dtype)
    clips = []
    for root in map(Path, clip_roots):
        if root.is_file() and root.suffix.lower() in VIDEO_SUFFIXES:
            clips.append(decode_video(root, Path(cache)))
        else:
            clips += frame_folders(root, 1)
    if not clips:
        raise ValueError(f"no clips of frames or video files found in {clip_roots}")
    names = [name for metric in METRICS if metric in metrics for name in SCORES_OF[metric]]
    scores = {method: {name: {} for name in names} for method in ("bicubic", "model")}
    for clip in clips:
        # A compressed source is coded whole, as a user's file is, and only its first max_frames
        # scored: coding those alone would make each clip start afresh with an I-frame.
        high = load_clip(clip.frames, scale if crf is None else 2 * scale,
                         max_frames if crf is None else 0)
        low = degrade(high, scale, degradation)
        if crf is not None:
            low, high = compress(low, crf)[:max_frames or None], high[:max_frames or None]
        results = {"bicubic": bicubic_upscale(low, scale), "model": upscale(low)}
        for method, upscaled in results.items():
            upscaled = quantise(upscaled)
            for frame, truth in zip(upscaled, high):
                for y_channel, suffix in ((True, "y"), (False, "rgb")):
                    for metric, measure in (("psnr", psnr), ("ssim", ssim)):
                        if metric in metrics:
                            scores[method][f"{metric}_{suffix}"].setdefault(clip.name, []).append(
                                measure(frame, truth, crop_border=crop_border, y_channel=y_channel))
            if "vmaf" in metrics:
                scores[method]["vmaf"][clip.name] = vmaf(crop(upscaled, crop_border),
                                                         crop(high, crop_border))
    return {method: {metric: average_per_clip(values) for metric, values in metrics.items()}
            for method, metrics in scores.items()}


# The columns of the tables: (score, label, format) for each metric.
COLUMNS = {"psnr": ("psnr_y", "PSNR-Y", ".2f"), "ssim": ("ssim_y", "SSIM-Y", ".4f"),
           "vmaf": ("vmaf", "VMAF", ".2f")}
METHODS = ("bicubic", "model")


def print_clip_table(results: dict, columns: list[tuple[str, str, str]]) -> None:
    """A row per clip and the average over clips: each method's scores side by side."""
    headers = [f"{method} {label}" if index == 0 else label
               for method in METHODS for index, (_, label, _) in enumerate(columns)]
    widths = [max(len(header) + 1, 7) for header in headers]
    formats = [f"{width}{form}" for width, (_, _, form) in zip(widths, columns * len(METHODS))]
    print(f"{'clip':30s} " + " ".join(f"{h:>{w}s}" for h, w in zip(headers, widths)))
    for clip in results["model"][columns[0][0]][0]:
        values = [results[method][score][0][clip] for method in METHODS for score, _, _ in columns]
        print(f"{clip[-30:]:30s} " + " ".join(f"{v:{f}}" for v, f in zip(values, formats)))
    means = [results[method][score][1] for method in METHODS for score, _, _ in columns]
    print(f"{'average over clips':30s} " + " ".join(f"{v:{f}}" for v, f in zip(means, formats)))


def print_summary(summary: list[tuple[str, dict]], columns: list[tuple[str, str, str]]) -> None:
    """A row per condition: each method's means as "PSNR-Y / SSIM-Y / VMAF", and the PSNR-Y gain
    when PSNR was measured."""
    labels = " / ".join(label for _, label, _ in columns)
    cells = [(condition, [" / ".join(f"{v:{form}}" for v, (_, _, form) in zip(means[m], columns))
                          for m in METHODS]) for condition, means in summary]
    widths = [max(len(f"{method} {labels}"), *(len(row[i]) for _, row in cells))
              for i, method in enumerate(METHODS)]
    gain = columns[0][0] == "psnr_y"
    headers = " ".join(f"{m + ' ' + labels:>{w}s}" for m, w in zip(METHODS, widths))
    print(f"{'sources':10s} {headers}" + (f" {'gain':>10s}" if gain else ""))
    for (condition, row), (_, means) in zip(cells, summary):
        line = f"{condition:10s} " + " ".join(f"{cell:>{w}s}" for cell, w in zip(row, widths))
        if gain:
            line += f" {means['model'][0] - means['bicubic'][0]:+7.2f} dB"
        print(line)


def unrounded(results: dict) -> dict:
    """The figures of one condition as JSON: {method: {score: {"clips": {clip: mean}, "mean": mean
    over clips}}}, and the PSNR-Y gain; an infinite PSNR (an exact reproduction) as null."""
    figures = {method: {score: {"clips": {clip: finite_or_none(v) for clip, v in per_clip.items()},
                                "mean": finite_or_none(mean)}
                        for score, (per_clip, mean) in scores.items()}
               for method, scores in results.items()}
    if "psnr_y" in results["model"]:
        figures["gain_psnr_y"] = finite_or_none(results["model"]["psnr_y"][1]
                                                - results["bicubic"]["psnr_y"][1])
    return figures


def precision_and_pipeline(args) -> tuple[str, str]:
    """How the model ran, in the words of the table's header and the JSON."""
    return ("bfloat16" if args.fp16 else "float32",
            "core.iedvr.Upscale" if args.plugin else "the eager network")


def write_json(path: str, args, scale: int, conditions: dict) -> None:
    """The run's settings and every condition's figures so far, unrounded."""
    precision, pipeline = precision_and_pipeline(args)
    report = {"model": str(args.model), "scale": scale, "degradation": args.degradation,
              "crop_border": args.crop_border, "max_frames": args.max_frames,
              "precision": precision, "pipeline": pipeline, "conditions": conditions}
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def evaluate_command(args) -> int:
    for condition in args.conditions:
        codec_crf(condition)  # every condition checked before the first one runs for minutes
    check_metrics(args.metrics)
    if args.json and not Path(args.json).parent.is_dir():
        raise FileNotFoundError(f"--json: the folder {str(Path(args.json).parent)!r} does not exist")
    columns = [COLUMNS[metric] for metric in METRICS if metric in args.metrics]
    scale = model_file.read_metadata(args.model)["scale"]
    precision, pipeline = precision_and_pipeline(args)
    summary, figures = [], {}
    for condition in args.conditions:
        results = evaluate(args.model, args.clips, args.degradation, args.crop_border,
                           args.max_frames, args.cache, args.fp16, args.plugin, condition,
                           tuple(args.metrics))
        print(f"{args.model}, {args.degradation} x{scale}, "
              f"{'clean' if condition == 'clean' else 'x264 ' + condition.upper() + ' (4:2:0)'} "
              f"sources, crop border {args.crop_border}, {precision}, {pipeline}")
        print_clip_table(results, columns)
        if "psnr" in args.metrics:
            rgb = [results[method]["psnr_rgb"][1] for method in METHODS]
            print(f"RGB PSNR: bicubic {rgb[0]:.2f}, model {rgb[1]:.2f}")
        print(flush=True)
        summary.append((condition, {method: [results[method][score][1] for score, _, _ in columns]
                                    for method in METHODS}))
        if args.json:  # after each condition, so that an interrupted run keeps what it measured
            figures[condition] = unrounded(results)
            write_json(args.json, args, scale, figures)
    if len(summary) > 1:
        print_summary(summary, columns)
    return 0
