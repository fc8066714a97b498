"""The training subpackage: data layouts, samples, schedule, a short run whose loss falls, exact
resume, a two-process run, and the exported model file."""

import csv
import dataclasses
import json
import math
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vs_iedvr import model_file, weights_file
from vs_iedvr.training.loss import charbonnier_loss
from vs_iedvr.network import build
from vs_iedvr.training import data
from vs_iedvr.training.train import TrainConfig, learning_rate_at, train

TINY_NETWORK = {"num_feat": 16, "deformable_groups": 2, "rigid_widths": (8, 16), "num_rigid_keep": 1,
                "num_enhance_block": 1, "num_fusion_block": 1, "num_reconstruct_block": 1}


def pattern(height, width, seed):
    """Smooth stripes and blobs at a few frequencies: detail that bicubic loses and a network can
    learn to restore within a few dozen steps."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    for _ in range(4):
        fy, fx = rng.uniform(0.05, 0.35, 2)
        image += rng.uniform(0.05, 0.15, 3) * np.sin(fy * y + fx * x + rng.uniform(0, 6))[..., None]
    return 0.5 + image


def write_clip(folder: Path, frames: int, size=(40, 48), seed=0, name="{:08d}.png"):
    """A pattern moving 1 pixel down and 2 right per frame, as PNG frames."""
    folder.mkdir(parents=True, exist_ok=True)
    canvas = pattern(size[0] + frames, size[1] + 2 * frames, seed)
    for t in range(frames):
        view = canvas[t : t + size[0], 2 * t : 2 * t + size[1]]
        Image.fromarray((view.clip(0, 1) * 255).round().astype(np.uint8)).save(folder / name.format(t))


def write_lossless_video(video: Path, count: int) -> tuple[list[np.ndarray], Path]:
    """`count` 48x40 pattern frames as a lossless RGB (FFV1) video; returns them and the path."""
    import av

    frames = [(pattern(40, 48, seed=t).clip(0, 1) * 255).round().astype(np.uint8) for t in range(count)]
    with av.open(str(video), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "bgr0"  # lossless RGB
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return frames, video


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for i in range(3):
        write_clip(root / "clips" / f"{i:03d}", frames=7, seed=i)
    stills = root / "stills"
    stills.mkdir()
    photo = (pattern(80, 96, seed=5).clip(0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(photo).save(stills / "photo.png")
    return root


def test_frame_folder_layouts(tmp_path):
    write_clip(tmp_path / "reds" / "train_sharp" / "000", 6)
    write_clip(tmp_path / "reds" / "train_sharp" / "001", 6)
    write_clip(tmp_path / "vimeo" / "sequences" / "00001" / "0001", 7, name="im{}.png")
    write_clip(tmp_path / "short", 3)
    assert [c.name for c in data.frame_folders(tmp_path / "reds", 5)] == [
        "reds/train_sharp/000", "reds/train_sharp/001"]
    vimeo = data.frame_folders(tmp_path / "vimeo", 5)
    assert len(vimeo) == 1 and len(vimeo[0].frames) == 7
    assert data.frame_folders(tmp_path / "short", 5) == []
    with pytest.raises(ValueError, match="no video file and no folder with at least 5 frames"):
        data.find_sources([str(tmp_path / "short")], 5, tmp_path / "cache")


def test_video_files_are_decoded(tmp_path):
    frames, video = write_lossless_video(tmp_path / "clip.mkv", 6)
    clips, stills = data.find_sources([str(video)], 5, tmp_path / "cache")
    assert len(clips) == 1 and not stills and len(clips[0].frames) == 6
    for path, frame in zip(clips[0].frames, frames):
        assert torch.equal(data.read_image(path), torch.from_numpy(frame).permute(2, 0, 1))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot decode"):
        data.find_sources([str(broken)], 5, tmp_path / "cache")


def test_a_folder_of_footage_gives_its_videos_and_frame_folders(tmp_path):
    write_clip(tmp_path / "footage" / "shot", 6)
    (tmp_path / "footage" / "camera").mkdir()
    frames, _ = write_lossless_video(tmp_path / "footage" / "camera" / "take.mkv", 7)
    clips, _ = data.find_sources([str(tmp_path / "footage")], 5, tmp_path / "cache")
    assert sorted((c.name, len(c.frames)) for c in clips) == [("footage/shot", 6), ("take.mkv", 7)]
    decoded = next(c for c in clips if c.name == "take.mkv")
    assert torch.equal(data.read_image(decoded.frames[3]),
                       torch.from_numpy(frames[3]).permute(2, 0, 1))


def test_a_clip_too_small_for_the_patch_is_refused_before_training(dataset_root):
    clips, _ = data.find_sources([str(dataset_root / "clips")], 5, dataset_root / "cache")
    data.WindowDataset(clips, [], 5, 4, 10, "BI", seed=0)  # 40x48 frames hold 40x40
    with pytest.raises(ValueError, match=r"clip clips/000: frames of 48x40 cannot hold the 44x44 "
                                         r"patch of patch_size 11 at x4: give patch_size at most 10"):
        data.WindowDataset(clips, [], 5, 4, 11, "BI", seed=0)


def test_samples_are_deterministic_and_shaped(dataset_root):
    clips, stills = data.find_sources([str(dataset_root / "clips"), f"stills:{dataset_root / 'stills'}"],
                                      5, dataset_root / "cache")
    dataset = data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=3)
    assert dataset.pass_length() == 3 * 3 + 1
    for index in range(12):
        low, high = dataset[index]
        assert low.shape == (5, 3, 8, 8) and high.shape == (3, 32, 32)
        again_low, again_high = dataset[index]
        assert torch.equal(low, again_low) and torch.equal(high, again_high)
        # 8-bit input, as decoded video would be
        assert torch.equal((low * 255).round(), low * 255)
    assert not torch.equal(dataset[0][1], dataset[1][1])


def test_cached_images_give_the_same_samples_without_decoding_again(dataset_root, monkeypatch):
    clips, stills = data.find_sources([str(dataset_root / "clips"), f"stills:{dataset_root / 'stills'}"],
                                      5, dataset_root / "cache")
    uncached = data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=3)
    cached = data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=3, image_cache_mb=1)
    expected = [uncached[i] for i in range(12)]
    assert cached.preload_images() == 3 * 7 + 1  # every frame and the photograph
    def decode_again(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(data, "read_image", decode_again)
    for index, (low, high) in enumerate(expected):  # every image from memory
        again_low, again_high = cached[index]
        assert torch.equal(low, again_low) and torch.equal(high, again_high)
    with pytest.raises(ValueError, match="image_cache_mb"):
        data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=3, image_cache_mb=-1)


def test_decoded_images_keep_to_their_budget_least_recently_used_out(tmp_path):
    paths = []
    for i, side in enumerate((8, 8, 8, 16)):  # 192 bytes each, and 768
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((side, side, 3), 10 * i, np.uint8)).save(paths[-1])
    images = data.DecodedImages(budget_bytes=400)  # two small images
    for path in paths[:3]:
        assert torch.equal(images(path), data.read_image(path))
    assert list(images.images) == paths[1:3] and images.used_bytes == 384
    images(paths[1])  # used again: paths[2] is now the oldest
    images(paths[0])
    assert list(images.images) == [paths[1], paths[0]]
    assert images(paths[3]).shape == (3, 16, 16) and paths[3] not in images.images  # over budget
    # A data worker's copy starts empty with the same budget.
    copy = pickle.loads(pickle.dumps(images))
    assert copy.images == {} and copy.used_bytes == 0 and copy.budget_bytes == 400


@pytest.mark.parametrize("still_fraction, expected", [(0.0, 0.25), (0.8, 0.8)])
def test_still_fraction_sets_the_share_of_stills(tmp_path, still_fraction, expected):
    # A black clip with 3 windows and one white still: the share of white samples tells the source.
    clip_folder, still_folder = tmp_path / "clip", tmp_path / "stills"
    still_folder.mkdir()
    clip_folder.mkdir()
    for t in range(7):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(clip_folder / f"{t:03d}.png")
    Image.fromarray(np.full((80, 80, 3), 255, np.uint8)).save(still_folder / "white.png")
    clips, stills = data.find_sources([str(clip_folder), f"stills:{still_folder}"], 5, tmp_path)
    dataset = data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=0, still_fraction=still_fraction)
    white = sum(dataset[i][1].mean().item() > 0.5 for i in range(400)) / 400
    assert abs(white - expected) < 0.07  # about 3 standard deviations of 400 draws
    with pytest.raises(ValueError, match="still_fraction"):
        data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=0, still_fraction=1.5)


def test_synthetic_motion_moves_smoothly():
    generator = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(120.0), torch.arange(160.0), indexing="ij")
    image = torch.stack([0.5 + 0.5 * torch.sin(x / 5), 0.5 + 0.5 * torch.cos(y / 7),
                         (x + y) / 280])
    clip = data.synthetic_motion(image, 5, 48, generator)
    assert clip.shape == (5, 3, 48, 48)
    steps = [(clip[t + 1] - clip[t]).abs().mean().item() for t in range(4)]
    assert all(s > 1e-3 for s in steps), "the camera must move"
    assert max(steps) < 4 * min(steps), "and move smoothly, without jumps"


def test_synthetic_motion_frames_beyond_the_window_continue_its_path():
    # A codec sample's lead-in: the window's own frames are those drawn without it.
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(1))
    clip = data.synthetic_motion(image, 5, 48, torch.Generator().manual_seed(2))
    longer = data.synthetic_motion(image, 5, 48, torch.Generator().manual_seed(2), before=3, after=2)
    assert longer.shape == (10, 3, 48, 48)
    assert torch.equal(longer[3:8], clip)
    steps = [(longer[t + 1] - longer[t]).abs().mean().item() for t in range(9)]
    assert max(steps) < 4 * min(steps), "the extra frames follow the same smooth path"


def test_learning_rate_warms_up_and_restarts():
    config = TrainConfig(learning_rate=1e-3, min_learning_rate=0.0, warmup_iterations=10)
    assert learning_rate_at(0, config, 100) == pytest.approx(1e-4)
    assert learning_rate_at(10, config, 100) == pytest.approx(1e-3)
    assert learning_rate_at(60, config, 100) == pytest.approx(5e-4)
    assert learning_rate_at(109, config, 100) < 1e-6
    assert learning_rate_at(110, config, 100) == pytest.approx(1e-3)  # restart


def test_time_budget_anneals_once_over_the_time():
    config = TrainConfig(learning_rate=1e-3, min_learning_rate=0.0, warmup_iterations=10)
    assert learning_rate_at(5, config, 100, progress=0.9) == pytest.approx(6e-4)  # warming up
    assert learning_rate_at(500, config, 100, progress=0.0) == pytest.approx(1e-3)
    assert learning_rate_at(500, config, 100, progress=0.5) == pytest.approx(5e-4)
    assert learning_rate_at(500, config, 100, progress=1.2) == pytest.approx(0.0)


def tiny_config(dataset_root, out_dir, **changes):
    values = dict(data=[str(dataset_root / "clips"), f"stills:{dataset_root / 'stills'}"],
                  out_dir=str(out_dir), network=dict(TINY_NETWORK), patch_size=8, batch_size=2,
                  iterations=40, learning_rate=2e-3, warmup_iterations=0, log_every=1,
                  checkpoint_every=10, validate_every=20, validation_fraction=0.25,
                  validation_samples=2, num_workers=0, threads=1, amp=False)
    values.update(changes)
    return TrainConfig(**values)


def read_log(out_dir):
    with open(Path(out_dir) / "log.csv") as f:
        return list(csv.DictReader(f))


def fixed_batch(dataset_root, count=8):
    clips, stills = data.find_sources([str(dataset_root / "clips")], 5, dataset_root / "cache")
    dataset = data.WindowDataset(clips, stills, 5, 4, 8, "BI", seed=123, augmentation=False)
    samples = [dataset[i] for i in range(count)]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def test_short_training_lowers_the_loss_and_exports(dataset_root, tmp_path):
    path = train(tiny_config(dataset_root, tmp_path / "run", restart_every=40))
    rows = read_log(tmp_path / "run")
    assert len(rows) == 40
    assert any(row["val_psnr_y"] for row in rows)
    # The offset predictors start at zero (a plain convolution) and learn to move.
    offsets = [float(row["offset_magnitude"]) for row in rows]
    assert offsets[0] == 0.0 and offsets[-1] > 0.0
    assert all(float(row["offset_magnitude_max"]) >= float(row["offset_magnitude"]) for row in rows)
    # The same samples through the untrained network (train() seeds it the same way) and
    # through the exported result.
    low, high = fixed_batch(dataset_root)
    torch.manual_seed(0)
    untrained = build("iedvr-m", **TINY_NETWORK).eval()
    trained, metadata = model_file.load_model(path)
    with torch.no_grad():
        before = charbonnier_loss(untrained(low), high).item()
        after = charbonnier_loss(trained(low), high).item()
    assert after < 0.7 * before, (before, after)
    assert metadata["weights"]["training"]["iterations"] == 40
    with torch.no_grad():
        assert trained(torch.rand(1, 5, 3, 9, 11)).shape == (1, 3, 36, 44)
    # ... and the VapourSynth filter runs it.
    import vapoursynth as vs

    clip = vs.core.std.BlankClip(format=vs.RGBS, width=11, height=9, length=3, color=[0.3, 0.5, 0.7])
    upscaled = vs.core.iedvr.Upscale(clip, model=str(path))
    assert (upscaled.width, upscaled.height) == (44, 36)
    assert np.isfinite(np.asarray(upscaled.get_frame(1)[0])).all()


def test_resume_reproduces_the_next_step(dataset_root, tmp_path):
    train(tiny_config(dataset_root, tmp_path / "straight", iterations=12, checkpoint_every=100))
    train(tiny_config(dataset_root, tmp_path / "resumed", iterations=10, checkpoint_every=10))
    first = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    started = time.time()
    train(tiny_config(dataset_root, tmp_path / "resumed", iterations=12, checkpoint_every=100))
    wall = time.time() - started
    straight = [float(r["loss"]) for r in read_log(tmp_path / "straight")]
    resumed = [float(r["loss"]) for r in read_log(tmp_path / "resumed")]
    assert len(resumed) == 12
    assert resumed[10:] == pytest.approx(straight[10:], rel=1e-5)
    # The seconds trained go on from the checkpoint's, as the steps do; with no --init they are
    # all the hours behind the weights.
    second = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert first["init_hours"] == 0.0 and first["seconds"] > 0
    assert 0 < second["seconds"] - first["seconds"] < wall
    assert second["total_hours"] == pytest.approx(second["seconds"] / 3600)


def test_two_processes_over_gloo(dataset_root, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", "29533", "-m", "vs_iedvr.training", "train",
               "--data", str(dataset_root / "clips"), "--out-dir", str(tmp_path / "ddp"),
               "--network", *[f"{k}={v}" for k, v in TINY_NETWORK.items()],
               "--patch-size", "8", "--batch-size", "1", "--iterations", "4", "--log-every", "1",
               "--warmup-iterations", "0", "--num-workers", "0", "--threads", "1", "--no-amp",
               "--validation-fraction", "0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_log(tmp_path / "ddp")) == 4
    # Progress lines go to stderr, once (rank 0), and stdout keeps the results.
    assert result.stderr.count("step 4/4 loss") == 1 and "step 4/4" not in result.stdout
    assert "trained 4 steps" in result.stdout and "model file:" in result.stdout
    model_file.load_model(tmp_path / "ddp" / "model.pt")
    # On a time budget the processes stop at one step, rank 0's deadline (else one would wait
    # forever for the other's gradients), the learning rate annealing. The budget includes the
    # start-up, which beside other tests can take most of it: one step is then all there is.
    budget = command + ["--out-dir", str(tmp_path / "budget"), "--iterations", "1000000",
                        "--time-budget-minutes", "0.1", "--no-export"]
    result = subprocess.run(budget, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rates = [float(row["learning_rate"]) for row in read_log(tmp_path / "budget")]
    assert len(rates) == 1 or rates[-1] < 0.5 * rates[0], rates


def test_evaluate_scores_model_and_bicubic(dataset_root, tmp_path):
    from vs_iedvr.training.degradations import bicubic_upscale
    from vs_iedvr.training.evaluate import evaluate, quantise
    from vs_iedvr.training.metrics import psnr

    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    clip_root = dataset_root / "clips"
    results = evaluate(path, [str(clip_root)], "BI", crop_border=2, max_frames=5)
    per_clip, mean = results["bicubic"]["psnr_y"]
    assert len(per_clip) == 3 and math.isfinite(mean)
    assert set(results["model"]) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    # The bicubic column recomputed directly for the first clip.
    frames = sorted((clip_root / "000").glob("*.png"))[:5]
    high = torch.stack([data.read_image(p) for p in frames]).float() / 255
    high = high[..., : high.shape[-2] // 4 * 4, : high.shape[-1] // 4 * 4]
    upscaled = quantise(bicubic_upscale(data.degrade(high, 4, "BI"), 4))
    expected = sum(psnr(u, h, crop_border=2, y_channel=True) for u, h in zip(upscaled, high)) / 5
    assert per_clip["clips/000"] == pytest.approx(expected)


def test_evaluate_in_bfloat16_is_close_to_float32_but_computed_in_it(dataset_root, tmp_path):
    from vs_iedvr.training.evaluate import evaluate

    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    clips = [str(dataset_root / "clips")]
    full = evaluate(path, clips, max_frames=3)["model"]["psnr_y"][1]
    half = evaluate(path, clips, max_frames=3, fp16=True)["model"]["psnr_y"][1]
    assert half != full and abs(half - full) < 0.1


def test_evaluate_through_the_plugin_scores_what_the_eager_network_scores(dataset_root, tmp_path):
    from vs_iedvr.training.evaluate import evaluate

    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    clips = [str(dataset_root / "clips")]
    eager = evaluate(path, clips, max_frames=4)["model"]
    plugin = evaluate(path, clips, max_frames=4, plugin=True)["model"]
    for metric in ("psnr_y", "ssim_rgb"):
        for clip, value in eager[metric][0].items():
            assert plugin[metric][0][clip] == pytest.approx(value, abs=1e-3)


def test_evaluate_reads_video_files_like_frame_folders(tmp_path):
    from vs_iedvr.training.evaluate import evaluate

    frames, video = write_lossless_video(tmp_path / "clip.mkv", 5)
    folder = tmp_path / "frames" / "clip"
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:08d}.png")
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    from_video = evaluate(path, [str(video)], cache=str(tmp_path / "cache"))
    from_frames = evaluate(path, [str(tmp_path / "frames")])
    for method in ("bicubic", "model"):
        assert from_video[method]["psnr_y"][1] == pytest.approx(from_frames[method]["psnr_y"][1])


def test_evaluate_command_prints_a_table(dataset_root, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    result = subprocess.run([sys.executable, "-m", "vs_iedvr.training", "evaluate", str(path),
                             str(dataset_root / "clips"), "--max-frames", "3"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bicubic PSNR-Y" in result.stdout and "average over clips" in result.stdout
    assert result.stdout.count("clips/00") == 3


def test_evaluate_writes_its_figures_unrounded_to_json(dataset_root, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    report_path = tmp_path / "scores.json"
    result = subprocess.run([sys.executable, "-m", "vs_iedvr.training", "evaluate", str(path),
                             str(dataset_root / "clips"), "--max-frames", "2", "--conditions",
                             "clean", "crf28", "--json", str(report_path)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert (report["scale"], report["max_frames"], report["precision"]) == (4, 2, "float32")
    assert list(report["conditions"]) == ["clean", "crf28"]
    # The printed tables, in order: the rows of each condition's clips and their average.
    rows = [line.split() for line in result.stdout.splitlines()
            if "clips/00" in line or line.startswith("average over clips")]
    rows = [row[-4:] for row in rows]
    expected = []
    for condition in report["conditions"].values():
        for method in ("bicubic", "model"):
            psnr_y, ssim_y = condition[method]["psnr_y"], condition[method]["ssim_y"]
            # The mean over clips is the mean of the clips' own figures.
            assert psnr_y["mean"] == pytest.approx(sum(psnr_y["clips"].values()) / len(psnr_y["clips"]))
            assert ssim_y["mean"] == pytest.approx(sum(ssim_y["clips"].values()) / len(ssim_y["clips"]))
        assert condition["gain_psnr_y"] == pytest.approx(
            condition["model"]["psnr_y"]["mean"] - condition["bicubic"]["psnr_y"]["mean"])
        clips = list(condition["model"]["psnr_y"]["clips"])
        assert len(clips) == 3
        for clip in clips + [None]:
            figures = [condition[method][score]["clips"][clip] if clip else condition[method][score]["mean"]
                       for method in ("bicubic", "model") for score in ("psnr_y", "ssim_y")]
            expected.append([f"{figures[0]:.2f}", f"{figures[1]:.4f}", f"{figures[2]:.2f}", f"{figures[3]:.4f}"])
    assert rows == expected  # the table shows the same figures, rounded

    missing = tmp_path / "no such folder" / "scores.json"
    refused = subprocess.run([sys.executable, "-m", "vs_iedvr.training", "evaluate", str(path),
                              str(dataset_root / "clips"), "--json", str(missing)],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert refused.returncode == 2 and "--json" in refused.stderr and "does not exist" in refused.stderr


def test_mixed_precision_run_on_the_cpu(dataset_root, tmp_path):
    # bfloat16 autocast where the CPU supports it (the deformable convolution included).
    train(tiny_config(dataset_root, tmp_path / "amp", iterations=3, amp=True, validation_fraction=0))
    assert all(math.isfinite(float(row["loss"])) for row in read_log(tmp_path / "amp"))


def test_offset_statistics_come_from_hooks_not_from_the_model():
    from vs_iedvr.edvr_blocks import DCNv2Pack
    from vs_iedvr.training.run_log import OffsetMonitor

    torch.manual_seed(0)
    network = build("iedvr-m", **TINY_NETWORK).train()
    monitor = OffsetMonitor(network)
    assert len(monitor.handles) == 4
    with torch.no_grad():
        network.pcd_align.cas_dcnpack.conv_offset.bias[:36].fill_(60.0)  # every offset 60 pixels
        network.pcd_align.cas_dcnpack.conv_offset.bias[36:].fill_(-80.0)  # the mask: not offsets
        network(torch.rand(1, 5, 3, 8, 8))
    # The other packs predict zero offsets at initialisation.
    assert monitor.read() == pytest.approx(((3 * 0.0 + 60.0) / 4, 60.0))
    assert monitor.read() == (0.0, 0.0)  # read() starts a new window
    with torch.no_grad():
        network.eval()(torch.rand(1, 5, 3, 8, 8))
    assert monitor.read() == (0.0, 0.0)  # validation's forward passes are not counted
    monitor.remove()
    with torch.no_grad():
        network.train()(torch.rand(1, 5, 3, 8, 8))
    assert monitor.read() == (0.0, 0.0)
    assert not any(hasattr(m, "offset_magnitude") for m in network.modules()
                   if isinstance(m, DCNv2Pack))


def test_log_writes_a_csv_row_per_call(tmp_path):
    from vs_iedvr.training.run_log import LOG_COLUMNS, RunLog

    log = RunLog(tmp_path)
    log.log(0, {"val_psnr_y": 31.25, "val_ssim_y": 0.875, "seconds": 0.0})
    log.log(20, {"loss": 0.0412345678, "learning_rate": 2e-4, "offset_magnitude": 1.5,
                 "iterations_per_s": 3.25, "seconds": 12.34})
    with pytest.raises(ValueError, match="not columns"):
        log.log(21, {"los": 1.0})
    log.close()
    log = RunLog(tmp_path)  # a resumed run appends
    log.log(40, {"loss": 0.03})
    log.close()
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", *LOG_COLUMNS]
    named = [dict(zip(rows[0], row)) for row in rows[1:]]
    assert [r["step"] for r in named] == ["0", "20", "40"]
    assert named[0]["val_psnr_y"] == "31.25" and named[0]["loss"] == ""
    assert named[1]["loss"] == "0.041235" and named[1]["learning_rate"] == "2.000e-04"
    assert named[1]["seconds"] == "12.3" and named[1]["val_psnr_y"] == ""
    assert named[2]["loss"] == "0.030000"


def test_log_adds_new_columns_to_an_older_log(tmp_path):
    from vs_iedvr.training.run_log import LOG_COLUMNS, RunLog

    (tmp_path / "log.csv").write_text("step,loss,seconds\n5,0.5,1.0\n")
    log = RunLog(tmp_path)
    log.log(6, {"loss": 0.25, "offset_magnitude_max": 2.0})
    log.close()
    rows = read_log(tmp_path)
    assert list(rows[0]) == ["step", *LOG_COLUMNS]
    assert (rows[0]["loss"], rows[0]["seconds"], rows[0]["learning_rate"]) == ("0.5", "1.0", "")
    assert (rows[1]["loss"], rows[1]["offset_magnitude_max"]) == ("0.250000", "2.000")


def test_log_writes_tensorboard_scalars_when_it_is_installed(tmp_path, monkeypatch):
    import types

    from vs_iedvr.training.run_log import RunLog

    scalars = []

    class SummaryWriter:  # torch.utils.tensorboard's interface, as far as the log uses it
        def __init__(self, folder):
            self.folder = folder

        def add_scalar(self, name, value, step):
            scalars.append((name, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard",
                        types.SimpleNamespace(SummaryWriter=SummaryWriter))
    log = RunLog(tmp_path)
    assert log.tensorboard.folder == str(tmp_path / "tensorboard")
    log.log(7, {"loss": 0.5, "val_psnr_y": 30.0})
    log.close()
    assert scalars == [("loss", 0.5, 7), ("val_psnr_y", 30.0, 7)]


def test_help_describes_every_option():
    import dataclasses
    import re
    from contextlib import redirect_stdout
    from io import StringIO

    from vs_iedvr.training.__main__ import main

    output = StringIO()
    with redirect_stdout(output), pytest.raises(SystemExit) as exit:
        main(["train", "--help"])
    assert exit.value.code == 0
    # The entries of the options list, each an option's line and its indented help lines.
    listing = output.getvalue().split("\noptions:\n")[1]
    entries = {}
    for entry in re.split(r"\n(?=  -)", listing):
        # argparse wraps lines (at hyphens too): compare without whitespace.
        entries[entry.split()[0].rstrip(",")] = "".join(entry.split())
    for config_field in dataclasses.fields(TrainConfig):
        sentence = config_field.metadata["help"]
        assert len(sentence.split()) >= 4 and sentence.endswith("."), config_field.name
        option = "--" + config_field.name.replace("_", "-")
        assert "".join(sentence.split()) in entries[option], config_field.name
    assert entries["--scale"].endswith("Default:4.") and entries["--amp"].endswith("Default:on.")


def test_validation_has_its_own_schedule(dataset_root, tmp_path):
    # Validation every 5 steps, log rows every 7: every validation gets a row of its own.
    train(tiny_config(dataset_root, tmp_path / "run", iterations=10, log_every=7,
                      validate_every=5, checkpoint_every=100, export=False))
    rows = read_log(tmp_path / "run")
    assert [(r["step"], r["val_psnr_y"] != "") for r in rows] == [
        ("5", True), ("7", False), ("10", True)]
    assert all(float(r["loss"]) > 0 and float(r["iterations_per_s"]) > 0 for r in rows)


def test_checkpoints_and_the_model_file_record_their_own_validation_score(dataset_root, tmp_path):
    # Validated at steps 5 and 10; best.pt is whichever scored higher, last.pt is step 10's.
    path = train(tiny_config(dataset_root, tmp_path / "run", iterations=10, validate_every=5,
                             checkpoint_every=100))
    scores = {int(r["step"]): float(r["val_psnr_y"]) for r in read_log(tmp_path / "run") if r["val_psnr_y"]}
    assert sorted(scores) == [5, 10]
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert last["val_psnr_y"] == pytest.approx(scores[10])
    assert best["val_psnr_y"] == pytest.approx(scores[best["step"]]) == pytest.approx(max(scores.values()))
    # The model file (from best.pt) and an export of last.pt say what their own weights scored.
    training = model_file.read_metadata(path)["weights"]["training"]
    assert training["val_psnr_y"] == pytest.approx(scores[best["step"]])
    assert training["best_val_psnr_y"] == pytest.approx(max(scores.values()))
    _, provenance = weights_file.read_weights(tmp_path / "run" / "last.pt")
    assert provenance["training"]["val_psnr_y"] == pytest.approx(scores[10])
    assert provenance["training"]["best_val_psnr_y"] == pytest.approx(max(scores.values()))
    # Weights never validated record none.
    train(tiny_config(dataset_root, tmp_path / "unvalidated", iterations=3, validation_fraction=0,
                      export=False))
    _, provenance = weights_file.read_weights(tmp_path / "unvalidated" / "last.pt")
    assert provenance["training"]["val_psnr_y"] is None
    assert provenance["training"]["best_val_psnr_y"] is None


def test_time_budget_stops_on_the_clock_with_timed_checkpoints(dataset_root, tmp_path):
    weights = tmp_path / "weights"
    # 500 steps take half a minute here: a run that ignored its budget would fail the time check.
    config = tiny_config(dataset_root, tmp_path / "run", iterations=500, log_every=10**9,
                         checkpoint_every=10**9, validate_every=10**9, time_budget_minutes=0.06,
                         checkpoint_every_minutes=0.01, weights_dir=str(weights), export=False)
    started = time.time()
    assert train(config) is None  # no model file asked for
    assert 3.6 <= time.time() - started < 20
    rows = read_log(tmp_path / "run")
    # Every 0.6 s a validated row; the last one at the deadline, with the learning rate annealed.
    assert len([r for r in rows if r["val_psnr_y"]]) >= 3
    assert rows[-1]["val_psnr_y"] != ""
    assert float(rows[-1]["learning_rate"]) < 0.1 * config.learning_rate
    steps = int(rows[-1]["step"])
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["step"] == steps
    light = torch.load(weights / "last-fp16.pt", weights_only=True)
    assert light["step"] == steps and "optimizer" not in light
    assert all(t.dtype == torch.float16 for t in light["model"].values())
    for name, tensor in last["model"].items():
        torch.testing.assert_close(light["model"][name].float(), tensor.float(), rtol=1e-3, atol=1e-4)
    assert (weights / "best-fp16.pt").exists() and not (tmp_path / "run" / "model.pt").exists()


class SteppingClock:
    """The `time` module for training.train and training.clock, whose time.time() reads a quarter
    of a second later at each call: the budget's arithmetic then runs in fake seconds, in about a
    second of steps and the same under any load
    (test_time_budget_stops_on_the_clock_with_timed_checkpoints keeps the real clock)."""

    def __init__(self):
        self.now = time.time()

    def time(self):
        self.now += 0.25
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def test_a_resumed_time_budget_keeps_its_deadline_and_its_cosine(dataset_root, tmp_path,
                                                                  monkeypatch):
    from vs_iedvr.training import clock as clock_module, train as train_module

    clock = SteppingClock()
    monkeypatch.setattr(train_module, "time", clock)
    monkeypatch.setattr(clock_module, "time", clock)
    run, budget = tmp_path / "run", 24.0
    # Stopped by its step count some seconds into the budget, as an interruption would leave it.
    first = tiny_config(dataset_root, run, iterations=12, log_every=1, checkpoint_every=10**9,
                        validate_every=10**9, time_budget_minutes=budget / 60, export=False)
    train(first)
    before = read_log(run)
    spent = torch.load(run / "last.pt", weights_only=True)["clock"]["budget_spent"]
    annealing_began = torch.load(run / "last.pt", weights_only=True)["clock"]["annealing_began"]
    assert 0 < annealing_began < spent < 0.75 * budget
    started = clock.now
    train(dataclasses.replace(first, iterations=10**6))  # resumes last.pt
    seconds = clock.now - started
    after = read_log(run)[len(before):]
    # Down the same cosine (a fresh budget would start again from the peak learning rate) ...
    assert float(after[0]["learning_rate"]) <= float(before[-1]["learning_rate"])
    assert float(after[-1]["learning_rate"]) < 0.05 * first.learning_rate
    # ... to the same deadline: the budget's seconds in all, not the budget again.
    assert budget - spent <= seconds < budget - spent + 3, (seconds, spent)
    # The checkpoint at the deadline leaves a fresh clock to whatever resumes it.
    finished = torch.load(run / "last.pt", weights_only=True)["clock"]
    assert finished == {"budget_spent": 0.0, "annealing_began": None}
    # Resumed after its deadline, a run is a new cycle over a budget of its own.
    train(dataclasses.replace(first, iterations=10**6, time_budget_minutes=0.05))
    again = read_log(run)[len(before) + len(after):]
    assert float(again[0]["learning_rate"]) > 0.9 * first.learning_rate and len(again) > 1
