"""Compressed sources in training and evaluation (training/codec.py): x264's round trip, the codec
samples of the dataset, evaluate's compressed conditions; and `vs-iedvr-train profile`."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from vs_iedvr import model_file
from vs_iedvr.network import build
from vs_iedvr.training import data
from vs_iedvr.training.__main__ import main as train_main
from vs_iedvr.training.codec import compress, encode_decode
from vs_iedvr.training.degradations import bicubic_downscale, bicubic_upscale
from vs_iedvr.training.evaluate import evaluate, quantise
from vs_iedvr.training.metrics import psnr

from test_training import TINY_NETWORK, tiny_config
from vs_iedvr.training.train import train



def smooth_frames(count: int, height: int, width: int) -> torch.Tensor:
    """[count, 3, H, W] stripes moving one pixel a frame, in one hue (4:2:0 keeps the colour):
    content a codec keeps at low CRFs."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = [np.stack([0.5 + 0.3 * gain * np.sin(0.2 * (x - t) + 0.1 * y) for gain in (1, 0.9, 0.8)])
              for t in range(count)]
    return (torch.from_numpy(np.stack(frames)).float() * 255).round() / 255


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(psnr(x, y) for x, y in zip(a, b)) / len(a)


def test_x264_round_trip_loses_more_at_higher_crf():
    frames = smooth_frames(5, 48, 64)
    scores = [mean_psnr(compress(frames, crf), frames) for crf in (10, 28, 45)]
    assert scores[0] > 38, scores  # 4:2:0 and CRF 10: close to the source
    assert scores[0] > scores[1] > scores[2], scores
    again = compress(frames, 28)
    assert torch.equal(again, compress(frames, 28))  # deterministic: samples are reproducible
    assert again.shape == frames.shape and again.dtype == torch.float32


def test_a_long_clip_encodes_the_same_every_time():
    # 40 frames of 160x90 (not whole macroblocks), as an evaluation's clip: with x264's MB-tree
    # every encode here differed, and so did the scores of the same model.
    y, x = np.mgrid[0:90, 0:160].astype(np.float64)
    frames = np.stack([np.stack([0.5 + 0.3 * gain * np.sin(0.2 * (x - t) + 0.1 * y) * np.cos(0.05 * (y + t))
                                 for gain in (1, 0.9, 0.8)], axis=-1) for t in range(40)])
    frames = (frames * 255).round().astype(np.uint8)
    first = encode_decode(frames, 28)
    for _ in range(2):
        assert np.array_equal(encode_decode(frames, 28), first)


def test_odd_sizes_are_refused_by_name():
    with pytest.raises(ValueError, match="even frame sizes, got 33x32"):
        encode_decode(np.zeros((2, 32, 33, 3), np.uint8), 23)


def save_clip(frames: torch.Tensor, folder) -> None:
    """[T, 3, H, W] frames in [0, 1] as a folder of PNGs, a clip source."""
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        array = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{t:08d}.png")


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec-data")
    save_clip(smooth_frames(7, 224, 240), root / "clips" / "000")
    return root


def test_codec_samples_are_aligned_compressed_and_reproducible(clip_root):
    clips, stills = data.find_sources([str(clip_root / "clips")], 5, clip_root / "cache")
    make = lambda fraction, crf: data.WindowDataset(clips, stills, 5, 4, 16, "BI", seed=3,
                                                    codec_fraction=fraction, crf_range=(crf, crf))
    clean, light, heavy = make(0.0, 0), make(1.0, 12), make(1.0, 45)
    for index in range(4):
        low, high = light[index]
        assert low.shape == (5, 3, 16, 16) and high.shape == (3, 64, 64)
        assert torch.equal(low, light[index][0])
        # The patch is cut from the compressed window where the target is: the target's own
        # downscale is close to it, and a pixel's shift is not.
        target = bicubic_downscale(high[None], 4)[0]
        aligned = psnr(low[2], target)
        assert aligned > 30, aligned
        assert psnr(low[2, :, :, 1:], target[:, :, :-1]) < aligned - 3
        assert psnr(heavy[index][0][2], bicubic_downscale(heavy[index][1][None], 4)[0]) < aligned - 3
    # Without the codec, the samples are those of a dataset that never heard of it: the extra
    # random draws are only made for codec runs.
    old = data.WindowDataset(clips, stills, 5, 4, 16, "BI", seed=3)
    assert all(torch.equal(clean[i][0], old[i][0]) for i in range(4))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reversed"])
def test_a_codec_window_is_coded_as_in_the_middle_of_a_stream(tmp_path, monkeypatch, reverse):
    # Encoded alone, a window would start with an I-frame, coded unlike the same frame in a user's
    # clip; so the window follows CODEC_LEAD_IN frames of its clip through x264, taken from the
    # side that the temporal reversal makes the past.
    frames = smooth_frames(16, 64, 64)
    save_clip(frames, tmp_path / "clips" / "000")
    clips, stills = data.find_sources([str(tmp_path / "clips")], 5, tmp_path / "cache")
    monkeypatch.setattr(data, "draw_augmentation", lambda _: data.Augmentation(reverse=reverse))
    # 64x64 frames hold the 16-pixel patch at x4 with no margin: the sample is the whole frame.
    dataset = data.WindowDataset(clips, stills, 5, 4, 16, "BI", seed=5, codec_fraction=1.0,
                                 crf_range=(30, 30))
    low_frames = data.degrade(frames, 4, "BI")
    lead_in = data.CODEC_LEAD_IN
    assert lead_in >= 4
    longest = 0
    for index in range(8):
        low, high = dataset[index]
        centre = next(t for t in range(16) if torch.equal(high, frames[t]))
        start = centre - 2
        if reverse:
            stream = low_frames[start : start + 5 + lead_in].flip(0)
        else:
            stream = low_frames[max(0, start - lead_in) : start + 5]
        assert torch.equal(low, compress(stream, 30)[-5:])
        longest = max(longest, len(stream))
        if len(stream) > 5:
            assert not torch.equal(low, compress(stream[-5:], 30))
    assert longest == 5 + lead_in


def test_codec_fraction_sets_the_share(clip_root):
    clips, stills = data.find_sources([str(clip_root / "clips")], 5, clip_root / "cache")
    dataset = data.WindowDataset(clips, stills, 5, 4, 16, "BI", seed=0, codec_fraction=0.5,
                                 crf_range=(40, 40))
    clean = data.WindowDataset(clips, stills, 5, 4, 16, "BI", seed=0)
    # A codec sample at CRF 40 is far from its clean downscale; a clean one equals it.
    compressed = 0
    for index in range(24):
        low, high = dataset[index]
        compressed += not torch.equal(low[2], data.degrade(high[None], 4, "BI")[0])
    assert 6 <= compressed <= 18, compressed
    assert clean.codec_fraction == 0.0


def test_the_model_file_of_a_codec_run_names_its_codec_recipe(clip_root, tmp_path):
    # Weights for compressed sources are told apart from clean ones by their metadata.
    def trained(out_dir, **codec):
        path = train(tiny_config(clip_root, tmp_path / out_dir, data=[str(clip_root / "clips")],
                                 iterations=2, validate_every=100, **codec))
        return model_file.read_metadata(path)["weights"]["training"]

    codec = trained("codec", codec_fraction=0.8, crf_min=20, crf_max=30)
    assert codec["codec_fraction"] == 0.8 and codec["crf_range"] == [20, 30]
    assert "codec_fraction" not in trained("clean") and codec["total_steps"] == 2


def test_evaluate_scores_compressed_sources(clip_root, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    clips = [str(clip_root / "clips")]
    clean = evaluate(path, clips, max_frames=3, cache=str(tmp_path / "cache"))
    crf40 = evaluate(path, clips, max_frames=3, cache=str(tmp_path / "cache"), condition="crf40")
    # Bicubic of the same compressed input loses what the codec took.
    assert crf40["bicubic"]["psnr_y"][1] < clean["bicubic"]["psnr_y"][1] - 1
    with pytest.raises(ValueError, match="--conditions: expected clean or crfN"):
        evaluate(path, clips, condition="crf99")


def test_evaluate_scores_the_first_frames_of_a_source_coded_whole(clip_root, tmp_path):
    # --max-frames on a compressed source: the clip is coded whole, as a user's file is, and its
    # first frames scored; those frames coded alone would start afresh with an I-frame.
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    scored = evaluate(path, [str(clip_root / "clips")], max_frames=3, cache=str(tmp_path / "cache"),
                      condition="crf35", metrics=("psnr",))["bicubic"]["psnr_y"][1]
    high = smooth_frames(7, 224, 240)  # the saved clip, whose size is a multiple of 8 already
    low = data.degrade(high, 4, "BI")

    def bicubic_psnr_y(compressed):
        upscaled = quantise(bicubic_upscale(compressed, 4))
        return sum(psnr(x, y, y_channel=True) for x, y in zip(upscaled, high)) / len(compressed)

    coded_whole = bicubic_psnr_y(compress(low, 35)[:3])
    coded_alone = bicubic_psnr_y(compress(low[:3], 35))
    assert abs(coded_whole - coded_alone) > 0.01
    assert scored == pytest.approx(coded_whole, abs=1e-9)
    with pytest.raises(ValueError, match="--max-frames: expected 0 .* got -2"):
        evaluate(path, [str(clip_root / "clips")], max_frames=-2, cache=str(tmp_path / "cache"))


def test_evaluate_command_prints_one_row_per_condition(clip_root, tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    model_file.export_model(build("iedvr-m", **TINY_NETWORK), path, "tiny")
    assert train_main(["evaluate", str(path), str(clip_root / "clips"), "--max-frames", "2",
                       "--cache", str(tmp_path / "cache"), "--conditions", "clean", "crf30"]) == 0
    out = capsys.readouterr().out
    assert "clean sources" in out and "x264 CRF30 (4:2:0) sources" in out
    summary = out[out.index("sources    "):].splitlines()
    assert [line.split()[0] for line in summary[1:]] == ["clean", "crf30"]


def test_profile_prints_where_a_step_goes(clip_root, tmp_path, capsys):
    assert train_main(["profile", "--data", str(clip_root / "clips"), "--out-dir", str(tmp_path),
                       "--network", *[f"{k}={v}" for k, v in TINY_NETWORK.items()],
                       "--patch-size", "16", "--batch-size", "2", "--steps", "2",
                       "--warmup-steps", "1", "--codec-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "codec fraction 0.5" in out
    rows = {}
    for line in out.splitlines():
        parts = line.rsplit(None, 2)
        if len(parts) == 3 and parts[2].endswith("%"):
            rows[parts[0].strip()] = float(parts[1])  # the backward's "the rest" comes last
    for name in ("batch", "forward", "pcd_align", "fusion", "backward", "deformable convolutions",
                 "convolutions", "optimizer"):
        assert name in rows, out
    assert rows["deformable convolutions"] > 0 and rows["convolutions"] > 0
    # The backward's parts are shares of it.
    parts = rows["deformable convolutions"] + rows["convolutions"] + rows["the rest"]
    assert parts == pytest.approx(rows["backward"], abs=0.3)
    assert "steps/s" in out and "of the measured float32 peak" in out
    # oneDNN's kernels of one more step, from its log: the convolutions' three passes among them,
    # and their time a part of the step's.
    calls, milliseconds = re.search(r"oneDNN's kernels in one more step: (\d+) calls, ([\d.]+) ms",
                                    out).groups()
    kinds = re.findall(r"^  convolution (forward_training|backward_data|backward_weights) ", out, re.M)
    assert set(kinds) == {"forward_training", "backward_data", "backward_weights"}, out
    step_ms = sum(rows[name] for name in ("forward", "loss", "backward", "optimizer"))
    assert int(calls) > 0 and 0 < float(milliseconds) < 1.5 * step_ms
