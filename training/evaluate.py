"""PSNR/SSIM of a model file on clips of ground-truth frames, next to bicubic upscaling (the
BasicSR protocol: BT.601 Y and RGB, optional border crop, averaged per clip then over clips).

The low-resolution input is made from the ground truth with the training degradation, then, for a
compressed condition ("crf28"), the whole low-resolution clip is encoded with x264 at that CRF in
YUV 4:2:0 and decoded, as a user's source would be (bicubic upscales the same compressed frames);
frames at the clip's ends get their missing neighbours by reflection (EDVR's evaluation, and the
plugin's default).
"""

import re
from pathlib import Path

import torch

from vs_iedvr import model_file
from vs_iedvr.clips import clip_of, frames_of
from vs_iedvr.precision import sixteen_bit
from vs_iedvr.window import fold

from .codec import compress
from .data import VIDEO_SUFFIXES, decode_video, degrade, frame_folders, read_image
from .degradations import bicubic_upscale
from .metrics import average_per_clip, psnr, ssim


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


def evaluate(model_path, clip_roots: list[str], degradation: str = "BI", crop_border: int = 0,
             max_frames: int = 0, cache: str = "runs/decoded", fp16: bool = False,
             plugin: bool = False, condition: str = "clean") -> dict:
    """Scores per clip and overall for the model and for bicubic: {method: {metric: (per_clip,
    mean)}} with metrics psnr_y, ssim_y, psnr_rgb, ssim_rgb. Clips are folders of frames or video
    files (decoded once into `cache`). fp16: run the model in 16-bit as the plugin's fp16=1 does
    on the CPU (bfloat16 weights and frames). plugin: run it through the VapourSynth plugin
    instead of the eager network. condition: "clean", or "crfN" for sources compressed with x264
    at CRF N."""
    crf = codec_crf(condition)
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
    scores = {method: {metric: {} for metric in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")}
              for method in ("bicubic", "model")}
    for clip in clips:
        high = load_clip(clip.frames, scale if crf is None else 2 * scale, max_frames)
        low = degrade(high, scale, degradation)
        if crf is not None:
            low = compress(low, crf)
        results = {"bicubic": bicubic_upscale(low, scale), "model": upscale(low)}
        for method, upscaled in results.items():
            upscaled = quantise(upscaled)
            for frame, truth in zip(upscaled, high):
                for y_channel, suffix in ((True, "y"), (False, "rgb")):
                    scores[method][f"psnr_{suffix}"].setdefault(clip.name, []).append(
                        psnr(frame, truth, crop_border=crop_border, y_channel=y_channel))
                    scores[method][f"ssim_{suffix}"].setdefault(clip.name, []).append(
                        ssim(frame, truth, crop_border=crop_border, y_channel=y_channel))
    return {method: {metric: average_per_clip(values) for metric, values in metrics.items()}
            for method, metrics in scores.items()}


def evaluate_command(args) -> int:
    for condition in args.conditions:
        codec_crf(condition)  # every condition checked before the first one runs for minutes
    scale = model_file.read_metadata(args.model)["scale"]
    summary = []
    for condition in args.conditions:
        results = evaluate(args.model, args.clips, args.degradation, args.crop_border,
                           args.max_frames, args.cache, args.fp16, args.plugin, condition)
        clips = list(results["model"]["psnr_y"][0])
        print(f"{args.model}, {args.degradation} x{scale}, "
              f"{'clean' if condition == 'clean' else 'x264 ' + condition.upper() + ' (4:2:0)'} "
              f"sources, crop border {args.crop_border}, {'bfloat16' if args.fp16 else 'float32'}, "
              f"{'core.iedvr.Upscale' if args.plugin else 'the eager network'}")
        print(f"{'clip':30s} {'bicubic PSNR-Y':>15s} {'SSIM-Y':>7s} {'model PSNR-Y':>13s} {'SSIM-Y':>7s}")
        for clip in clips:
            row = [results[m][k][0][clip] for m in ("bicubic", "model") for k in ("psnr_y", "ssim_y")]
            print(f"{clip[-30:]:30s} {row[0]:15.2f} {row[1]:7.4f} {row[2]:13.2f} {row[3]:7.4f}")
        means = [results[m][k][1] for m in ("bicubic", "model") for k in ("psnr_y", "ssim_y")]
        print(f"{'average over clips':30s} {means[0]:15.2f} {means[1]:7.4f} {means[2]:13.2f} {means[3]:7.4f}")
        rgb = [results[m]["psnr_rgb"][1] for m in ("bicubic", "model")]
        print(f"RGB PSNR: bicubic {rgb[0]:.2f}, model {rgb[1]:.2f}\n", flush=True)
        summary.append((condition, *means))
    if len(summary) > 1:
        print(f"{'sources':10s} {'bicubic PSNR-Y / SSIM-Y':>24s} {'model PSNR-Y / SSIM-Y':>22s} {'gain':>8s}")
        for condition, bicubic_psnr, bicubic_ssim, model_psnr, model_ssim in summary:
            print(f"{condition:10s} {bicubic_psnr:14.2f} / {bicubic_ssim:.4f} {model_psnr:12.2f} / "
                  f"{model_ssim:.4f} {model_psnr - bicubic_psnr:+7.2f} dB")
    return 0
