"""vs_iedvr.upscale, the Python wrapper: the same arguments as core.iedvr.Upscale, forwarded as
given; bad arguments refused as vapoursynth.Error under their own names; scene_detect marks cuts
as misc.SCDetect would, so that windows stay inside a shot."""

import inspect
import re

import numpy as np
import pytest
import torch
import vapoursynth as vs

import vs_iedvr
from small_network import export_small_network
from vs_iedvr import any_format

core = vs.core
HEIGHT, WIDTH = 24, 32
WRAPPER_ONLY = ["matrix", "scene_detect", "sc_threshold"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("wrapper") / "small.pt"
    export_small_network(path)
    return str(path)


def clip_of(frames: np.ndarray, props=None) -> vs.VideoNode:
    """An RGBS clip whose frame n holds frames[n] (n, 3, h, w), with optional per-frame props."""
    blank = core.std.BlankClip(format=vs.RGBS, width=frames.shape[-1], height=frames.shape[-2],
                               length=frames.shape[0])

    def fill(n, f):
        out = f.copy()
        for plane in range(3):
            np.asarray(out[plane])[:] = frames[n, plane]
        for key, value in (props or {}).get(n, {}).items():
            out.props[key] = value
        return out

    return core.std.ModifyFrame(blank, blank, fill)


def planes(frame) -> np.ndarray:
    return np.stack([np.asarray(frame[p]) for p in range(frame.format.num_planes)]).astype(np.float32)


def random_frames(length=5, seed=1) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(length, 3, HEIGHT, WIDTH, generator=generator).numpy()


def filter_argument_names() -> list[str]:
    """The names in core.iedvr.Upscale's signature, e.g. "clip:vnode;model:data:opt;..."."""
    return [entry.split(":")[0] for entry in core.iedvr.Upscale.signature.split(";") if entry]


@pytest.mark.parametrize("function", [vs_iedvr.upscale, any_format.upscale],
                         ids=["vs_iedvr.upscale", "any_format.upscale"])
def test_wrapper_arguments_are_the_filters(function):
    parameters = inspect.signature(function).parameters
    names = [name for name in parameters if name not in WRAPPER_ONLY]
    assert names == filter_argument_names()
    # None everywhere: an argument left out is not passed, so the filter's default applies.
    assert all(parameters[name].default is None for name in names if name != "clip")
    assert [name for name in parameters][-len(WRAPPER_ONLY):] == WRAPPER_ONLY
    assert parameters["scene_detect"].default is False and parameters["sc_threshold"].default == 0.1


def test_arguments_are_forwarded_as_given(model):
    clip = clip_of(random_frames())
    given = dict(model=model, device_index=-1, fp16=True, num_streams=2, tilesize=[16, 16],
                 overlap=[4, 4], border="replicate", scene_change=False)
    wrapped = planes(vs_iedvr.upscale(clip, **given).get_frame(0))
    direct = planes(core.iedvr.Upscale(clip, **{**given, "fp16": 1, "scene_change": 0}).get_frame(0))
    np.testing.assert_array_equal(wrapped, direct)
    # The arguments change the frame, so a wrapper that dropped them would fail the check above.
    assert not np.array_equal(wrapped, planes(core.iedvr.Upscale(clip, model=model).get_frame(0)))
    # One int for tilesize/overlap is the filter's one-value list.
    one = vs_iedvr.upscale(clip, model=model, tilesize=16, overlap=4).get_frame(1)
    listed = core.iedvr.Upscale(clip, model=model, tilesize=[16], overlap=[4]).get_frame(1)
    np.testing.assert_array_equal(planes(one), planes(listed))


def test_scale_is_forwarded(model):
    """Needs the filter's scale argument (the small network is 4x)."""
    clip = clip_of(random_frames())
    np.testing.assert_array_equal(planes(vs_iedvr.upscale(clip, model=model, scale=4).get_frame(2)),
                                  planes(core.iedvr.Upscale(clip, model=model).get_frame(2)))
    with pytest.raises(vs.Error, match="scale"):
        vs_iedvr.upscale(clip, model=model, scale=2)


BAD_ARGUMENTS = [
    ({"fp16": "yes"}, "fp16 must be a bool or 0/1"),
    ({"fp16": 2}, "fp16 must be a bool or 0/1"),
    ({"scene_change": "no"}, "scene_change must be a bool or 0/1"),
    ({"scene_detect": 0.5}, "scene_detect must be a bool or 0/1"),
    ({"model": 3}, "model must be a path"),
    ({"scale": "4"}, "scale must be an int"),
    ({"scale": 4.0}, "scale must be an int"),
    ({"device_index": 0.5}, "device_index must be an int"),
    ({"num_streams": True}, "num_streams must be an int"),
    ({"num_streams": "2"}, "num_streams must be an int"),
    ({"tilesize": "16"}, "tilesize must be an int or a list of 1 or 2 ints"),
    ({"tilesize": [16, 16, 16]}, "tilesize must be an int or a list of 1 or 2 ints"),
    ({"tilesize": [16.0]}, "tilesize must be an int or a list of 1 or 2 ints"),
    ({"overlap": (4, "4")}, "overlap must be an int or a list of 1 or 2 ints"),
    ({"border": 1}, "border must be a str"),
    ({"matrix": 1}, "matrix must be a str"),
    ({"matrix": "bt709"}, "matrix must be one of"),
    ({"sc_threshold": 0}, r"sc_threshold must be a float in \(0, 1\]"),
    ({"sc_threshold": 1.5}, r"sc_threshold must be a float in \(0, 1\]"),
    ({"sc_threshold": "0.1"}, r"sc_threshold must be a float in \(0, 1\]"),
    ({"scene_detect": True, "scene_change": 0}, "scene_detect=True .* scene_change=0"),
    # Values of the right type are the filter's to check; its errors name the argument too.
    ({"num_streams": 0}, "num_streams must be between 1 and 64"),
    ({"border": "wrap"}, "border must be"),
]


@pytest.mark.parametrize("arguments, message", BAD_ARGUMENTS, ids=[str(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_vapoursynth_errors(model, arguments, message):
    clip = core.std.BlankClip(format=vs.YUV420P8, width=WIDTH, height=HEIGHT, length=3)
    with pytest.raises(vs.Error, match=message):
        vs_iedvr.upscale(clip, **{"model": model, **arguments})


@pytest.mark.parametrize("clip, message", [
    ("not a clip", "clip must be a vapoursynth.VideoNode, got str"),
    (core.std.Splice([core.std.BlankClip(format=vs.RGBS, width=8, height=8),
                      core.std.BlankClip(format=vs.YUV420P8, width=8, height=8)], mismatch=True),
     "clip must have a constant format and size"),
    (core.std.Splice([core.std.BlankClip(format=vs.YUV420P8, width=8, height=8),
                      core.std.BlankClip(format=vs.YUV420P8, width=16, height=8)], mismatch=True),
     "clip must have a constant format and size"),
    (core.std.BlankClip(format=vs.GRAY8), "clip must be YUV or RGB, got Gray8"),
], ids=["not_a_clip", "variable_format", "variable_size", "gray"])
def test_bad_clips_are_vapoursynth_errors(model, clip, message):
    with pytest.raises(vs.Error, match=re.escape(message)):
        vs_iedvr.upscale(clip, model=model)


def two_shots() -> np.ndarray:
    """10 frames: 0-4 one dark picture, 5-9 a bright one, each frame with a little noise of its
    own (luma differences within a shot far below 0.1, across the cut far above)."""
    generator = np.random.default_rng(0)
    dark = 0.5 * generator.random((3, HEIGHT, WIDTH))
    bright = 0.5 + 0.5 * generator.random((3, HEIGHT, WIDTH))
    shots = np.stack([dark] * 5 + [bright] * 5)
    return (shots + 0.02 * generator.random(shots.shape)).astype(np.float32)


def test_scene_detect_keeps_windows_inside_the_shot(model):
    frames = two_shots()
    detected = vs_iedvr.upscale(clip_of(frames), model=model, device_index=-1, scene_detect=True)
    # The oracle: the same clip with the cut marked by hand, as a scene detector would.
    by_hand = core.iedvr.Upscale(clip_of(frames, props={4: {"_SceneChangeNext": 1}, 5: {"_SceneChangePrev": 1}}),
                                 model=model, device_index=-1)
    unmarked = vs_iedvr.upscale(clip_of(frames), model=model, device_index=-1)
    for n in (3, 4, 5, 6):
        np.testing.assert_array_equal(planes(detected.get_frame(n)), planes(by_hand.get_frame(n)))
    # Without detection the windows of frames 4 and 5 run into the other shot. The small
    # network's random weights draw little from neighbours (about 1e-5 here), but that is still
    # far above float32 rounding on [0, 1] (about 6e-8), and CPU runs repeat exactly.
    for n in (4, 5):
        assert np.abs(planes(detected.get_frame(n)) - planes(unmarked.get_frame(n))).max() > 1e-6
    # The filter keeps the centre frame's props: the marks are on the frames either side of the cut.
    marks = [(f.props["_SceneChangePrev"], f.props["_SceneChangeNext"]) for f in detected.frames()]
    assert marks == [(0, 0)] * 4 + [(0, 1), (1, 0)] + [(0, 0)] * 4


@pytest.mark.parametrize("format", [vs.RGBS, vs.YUV444P16, vs.YUV420P8], ids=["RGBS", "YUV444P16", "YUV420P8"])
@pytest.mark.parametrize("threshold", [0.1, 0.04])
def test_scene_detect_threshold_is_on_luma_differences(model, format, threshold):
    # Grey frames: their luma is their value under any matrix, so the difference between
    # neighbours is known exactly (up to 8-bit rounding, well inside the margins: 0.05 and 0.35
    # against thresholds 0.04 and 0.1).
    values = [0.2, 0.2, 0.25, 0.6, 0.6]
    rgb = core.std.Splice([core.std.BlankClip(format=vs.RGBS, width=WIDTH, height=HEIGHT, length=1,
                                              color=[v] * 3) for v in values])
    clip = rgb if format == vs.RGBS else core.resize.Bicubic(rgb, format=format, matrix_s="709")
    out = vs_iedvr.upscale(clip, model=model, device_index=-1, scene_detect=True, sc_threshold=threshold)
    cut_before = [False] + [abs(b - a) > threshold for a, b in zip(values, values[1:])]
    expected = [(int(cut_before[n]), int(n + 1 < len(values) and cut_before[n + 1])) for n in range(len(values))]
    # resize carries the props to the output format.
    marks = [(f.props["_SceneChangePrev"], f.props["_SceneChangeNext"]) for f in out.frames()]
    assert marks == expected


def test_scene_detect_on_a_single_frame(model):
    clip = core.std.BlankClip(format=vs.YUV420P8, width=WIDTH, height=HEIGHT, length=1)
    frame = vs_iedvr.upscale(clip, model=model, scene_detect=1).get_frame(0)
    assert (frame.props["_SceneChangePrev"], frame.props["_SceneChangeNext"]) == (0, 0)
