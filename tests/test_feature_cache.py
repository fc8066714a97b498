"""The engine computes each input frame's features once and reuses them in the other windows that
contain the frame; the result equals running whole windows through the network."""

import random

import numpy as np
import pytest
import torch
import vapoursynth as vs

from engine_library import Engine
from small_network import export_small_network
from vs_iedvr import model_file

core = vs.core
LENGTH, HEIGHT, WIDTH = 9, 12, 17


def reflect(i, last):
    return -i if i < 0 else (2 * last - i if i > last else i)


def window_numbers(n):
    return [reflect(n + k, LENGTH - 1) for k in range(-2, 3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    net = export_small_network(folder / "split.pt")
    # The same network as a model file with `forward` only (no per-frame half): whole windows.
    with torch.no_grad(), model_file.without_torchscript_deprecation():
        traced = torch.jit.trace(model_file.PaddedNetwork(net), torch.rand(1, 5, 3, 8, 8),
                                 check_trace=False)
        metadata = model_file.read_metadata(folder / "split.pt")
        torch.jit.save(traced, str(folder / "whole.pt"),
                       _extra_files={model_file.METADATA_ENTRY: __import__("json").dumps(metadata)})
    frames = torch.rand(LENGTH, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2)).numpy()
    return net, folder / "split.pt", folder / "whole.pt", frames


def test_each_frame_is_computed_once_in_sequential_order(setup):
    _, split, whole, frames = setup
    engine, reference = Engine(split), Engine(whole)
    for n in range(LENGTH):
        numbers = window_numbers(n)
        np.testing.assert_allclose(engine.run(frames[numbers], numbers),
                                   reference.run(frames[numbers], numbers), atol=1e-5)
    assert engine.counts() == (LENGTH, 5 * LENGTH - LENGTH)
    assert reference.counts() == (0, 0)  # forward-only model files run without the cache


def test_random_order_gives_identical_frames(setup):
    _, split, _, frames = setup
    sequential = Engine(split)
    expected = {n: sequential.run(frames[window_numbers(n)], window_numbers(n)) for n in range(LENGTH)}
    shuffled = Engine(split)
    order = list(range(LENGTH)) * 2
    random.Random(3).shuffle(order)
    for n in order:
        np.testing.assert_array_equal(shuffled.run(frames[window_numbers(n)], window_numbers(n)), expected[n])
    computed, reused = shuffled.counts()
    assert computed >= LENGTH and computed + reused == 5 * len(order)


def test_engines_of_one_filter_share_the_cache(setup):
    _, split, _, frames = setup
    first = Engine(split)
    second = Engine(split, share_with=first)
    for n in range(LENGTH):
        (first if n % 2 else second).run(frames[window_numbers(n)], window_numbers(n))
    assert first.counts() == second.counts() == (LENGTH, 4 * LENGTH)


def test_tiles_are_cached_per_tile(setup):
    _, split, whole, frames = setup
    engine, reference = Engine(split), Engine(whole)
    tiling = (8, 8, 2, 2)  # 2 x 3 tiles of the 17 x 12 frames
    for n in range(LENGTH):
        numbers = window_numbers(n)
        np.testing.assert_allclose(engine.run(frames[numbers], numbers, tiling),
                                   reference.run(frames[numbers], numbers, tiling), atol=1e-5)
    assert engine.counts() == (6 * LENGTH, 6 * 4 * LENGTH)


def test_the_engine_reads_strided_planes_and_only_the_frames_it_needs(setup):
    # The engine reads each plane through its pointer and stride, as VapourSynth hands frames out
    # (rows padded here), and reads a frame only when its features are not cached: the cached
    # neighbours of the second window are replaced by NaN, which would poison any frame that read
    # them.
    _, split, _, frames = setup
    padded = np.full((LENGTH, 3, HEIGHT, WIDTH + 7), np.nan, np.float32)
    padded[..., :WIDTH] = frames
    strided = padded[..., :WIDTH]
    engine, reference = Engine(split), Engine(split)
    np.testing.assert_array_equal(engine.run(strided[[0, 1, 2, 3, 4]], [0, 1, 2, 3, 4]),
                                  reference.run(frames[[0, 1, 2, 3, 4]], [0, 1, 2, 3, 4]))
    poisoned = frames[[1, 2, 3, 4, 5]].copy()
    poisoned[[0, 1, 3]] = np.nan  # frames 1, 2 and 4: cached; 3 (the centre) and 5 are read
    expected = reference.run(frames[[1, 2, 3, 4, 5]], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(engine.run(poisoned, [1, 2, 3, 4, 5]), expected)


def test_filter_output_equals_the_eager_network_in_any_order(setup):
    net, split, _, frames = setup
    blank = core.std.BlankClip(format=vs.RGBS, width=WIDTH, height=HEIGHT, length=LENGTH)

    def fill(n, f):
        out = f.copy()
        for plane in range(3):
            np.asarray(out[plane])[:] = frames[n, plane]
        return out

    clip = core.iedvr.Upscale(core.std.ModifyFrame(blank, blank, fill), model=str(split), num_streams=2,
                             fp16=0)
    order = list(range(LENGTH))
    random.Random(4).shuffle(order)
    for n in order:
        got = np.stack([np.asarray(clip.get_frame(n)[p]) for p in range(3)])
        with torch.no_grad():
            want = model_file.PaddedNetwork(net)(torch.from_numpy(frames[window_numbers(n)])[None])[0]
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


class PyramidOnlyNetwork(model_file.PaddedNetwork):
    """The model files of earlier versions: `features` returns the three pyramid levels only, and
    `upscale` aligns from them with the concatenating convolutions."""

    def features(self, frames):
        padded = model_file.pad_frames(frames.unsqueeze(0), 4).squeeze(0)
        return self.network.extract_features(padded)

    def upscale(self, l1, l2, l3, centre):
        padded = model_file.pad_frames(centre.unsqueeze(1), 4).squeeze(1)
        return model_file.crop_output(self.network.reconstruct(l1, l2, l3, padded), centre, self.scale)


def test_model_files_with_three_feature_tensors_still_run(setup, tmp_path):
    net, split, _, frames = setup
    wrapper = PyramidOnlyNetwork(net)
    example = torch.rand(5, 3, 8, 8)
    with torch.no_grad(), model_file.without_torchscript_deprecation():
        levels = [level.unsqueeze(0).expand(1, 5, *level.shape[1:]) for level in wrapper.features(example[:1])]
        traced = torch.jit.trace_module(wrapper, {"features": (example[:1],),
                                                  "upscale": (*levels, example[2:3])}, check_trace=False)
        torch.jit.save(traced, str(tmp_path / "old.pt"), _extra_files={
            model_file.METADATA_ENTRY: __import__("json").dumps(model_file.read_metadata(split))})
    old, new = Engine(tmp_path / "old.pt"), Engine(split)
    for n in (0, 4):
        numbers = window_numbers(n)
        np.testing.assert_allclose(old.run(frames[numbers], numbers), new.run(frames[numbers], numbers),
                                   atol=1e-5)
    assert old.counts()[0] == len(set(window_numbers(0) + window_numbers(4)))  # cached, per frame
    # libtorch cannot freeze a module without `forward`: such files run without the CPU fusion.
    assert old.info().fused_convolutions == 0
