"""PSNR/SSIM of a model file on clips of ground-truth frames, next to bicubic upscaling (the
BasicSR protocol: BT.601 Y and RGB, optional border crop, averaged per clip then over clips).

The low-resolution input is made from the ground truth with the training degradation; frames at
the clip's ends get their missing neighbours by reflection (EDVR's evaluation, and the plugin's
default).
"""

from pathlib import Path

import torch

from vs_iedvr import model_file
from vs_iedvr.clips import clip_of, frames_of
from vs_iedvr.precision import sixteen_bit
from vs_iedvr.window import fold

from .data import VIDEO_SUFFIXES, decode_video, degrade, frame_folders, read_image
from .degradations import bicubic_upscale
from .metrics import average_per_clip, psnr, ssim


def quantise(frames: torch.Tensor) -> torch.Tensor:
    """8-bit frames, as written to a video file (and as BasicSR scores them)."""
    return (frames.clamp(0, 1) * 255).round() / 255


def load_clip(frames: tuple[Path, ...], scale: int, max_frames: int = 0) -> torch.Tensor:
    """Ground truth [N, 3, H, W] in [0, 1], cropped to a multiple of the scale."""
    paths = frames[:max_frames] if max_frames else frames
    high = torch.stack([read_image(p) for p in paths]).float() / 255
    height, width = high.shape[-2] // scale * scale, high.shape[-1] // scale * scale
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


def evaluate(model_path, clip_roots: list[str], degradation: str = "BI", crop_border: int = 0,
             max_frames: int = 0, cache: str = "runs/decoded", fp16: bool = False,
             plugin: bool = False) -> dict:
    """Scores per clip and overall for the model and for bicubic: {method: {metric: (per_clip,
    mean)}} with metrics psnr_y, ssim_y, psnr_rgb, ssim_rgb. Clips are folders of frames or video
    files (decoded once into `cache`). fp16: run the model in 16-bit as the plugin's fp16=1 does
    on the CPU (bfloat16 weights and frames). plugin: run it through the VapourSynth plugin
    instead of the eager network."""
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
        high = load_clip(clip.frames, scale, max_frames)
        low = degrade(high, scale, degradation)
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
    results = evaluate(args.model, args.clips, args.degradation, args.crop_border, args.max_frames,
                       args.cache, args.fp16, args.plugin)
    clips = list(results["model"]["psnr_y"][0])
    header = f"{'clip':30s} {'bicubic PSNR-Y':>15s} {'SSIM-Y':>7s} {'model PSNR-Y':>13s} {'SSIM-Y':>7s}"
    print(f"{args.model}, {args.degradation} x{model_file.read_metadata(args.model)['scale']}, "
          f"crop border {args.crop_border}, {'bfloat16' if args.fp16 else 'float32'}, "
          f"{'core.iedvr.Upscale' if args.plugin else 'the eager network'}")
    print(header)
    for clip in clips:
        row = [results[m][k][0][clip] for m in ("bicubic", "model") for k in ("psnr_y", "ssim_y")]
        print(f"{clip[-30:]:30s} {row[0]:15.2f} {row[1]:7.4f} {row[2]:13.2f} {row[3]:7.4f}")
    means = [results[m][k][1] for m in ("bicubic", "model") for k in ("psnr_y", "ssim_y")]
    print(f"{'average over clips':30s} {means[0]:15.2f} {means[1]:7.4f} {means[2]:13.2f} {means[3]:7.4f}")
    rgb = [results[m]["psnr_rgb"][1] for m in ("bicubic", "model")]
    print(f"RGB PSNR: bicubic {rgb[0]:.2f}, model {rgb[1]:.2f}")
    return 0
