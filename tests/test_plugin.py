"""core.iedvr.Upscale, the native VapourSynth filter, against the eager network on the same
frames; border and scene-change handling; threads and request order; a model file rewritten in
place; errors; vspipe; and that VapourSynth's start-up does not load libtorch."""

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import vapoursynth as vs

from devices import requires_cuda
from small_network import SMALL, export_small_network
from vs_iedvr import model_file
from vs_iedvr.network import IEDVR

core = vs.core
LENGTH, HEIGHT, WIDTH = 7, 10, 13


@pytest.fixture(scope="module")
def network_and_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "small.pt"
    return export_small_network(path), str(path)


@pytest.fixture(scope="module")
def frames():
    return torch.rand(LENGTH, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))


def clip_of(frames: torch.Tensor, format=vs.RGBS, props=None):
    """A clip whose frame n holds frames[n], with optional per-frame properties."""
    blank = core.std.BlankClip(format=format, width=frames.shape[-1], height=frames.shape[-2],
                               length=frames.shape[0])
    dtype = np.float16 if format == vs.RGBH else np.float32

    def fill(n, f):
        out = f.copy()
        for plane in range(3):
            np.asarray(out[plane])[:] = frames[n, plane].numpy().astype(dtype)
        for key, value in (props or {}).get(n, {}).items():
            out.props[key] = value
        return out

    return core.std.ModifyFrame(blank, blank, fill)


def planes(frame) -> np.ndarray:
    return np.stack([np.asarray(frame[p]) for p in range(3)]).astype(np.float32)


def expected(net, frames, indexes):
    with torch.no_grad():
        return model_file.PaddedNetwork(net)(frames[indexes][None])[0].numpy()


def reflect(i, first, last):
    return first + abs(i - first) if i < first else (2 * last - i if i > last else i)


@pytest.mark.parametrize("n", [0, 1, LENGTH // 2, LENGTH - 2, LENGTH - 1])
def test_frames_equal_the_eager_network(network_and_model, frames, n):
    net, path = network_and_model
    out = core.iedvr.Upscale(clip_of(frames), model=path, fp16=0)
    assert (out.width, out.height, out.num_frames) == (4 * WIDTH, 4 * HEIGHT, LENGTH)
    window = [reflect(n + k, 0, LENGTH - 1) for k in range(-2, 3)]
    np.testing.assert_allclose(planes(out.get_frame(n)), expected(net, frames, window), atol=1e-5)


def test_a_model_file_rewritten_in_place_is_loaded_again(frames, tmp_path):
    # The engine prepares a model file once per process and shares it with later filters: the
    # same file gives the same frames, a rewritten one its new weights' frames.
    path = tmp_path / "model.pt"
    first = export_small_network(path)
    before = planes(core.iedvr.Upscale(clip_of(frames), model=str(path), fp16=0).get_frame(3))
    again = planes(core.iedvr.Upscale(clip_of(frames), model=str(path), fp16=0).get_frame(3))
    np.testing.assert_array_equal(again, before)
    second = IEDVR(SMALL).eval()
    with torch.no_grad():
        for name, parameter in second.named_parameters():
            parameter.copy_(dict(first.named_parameters())[name] * 0.5)
    model_file.export_model(second, path, "small")
    after = planes(core.iedvr.Upscale(clip_of(frames), model=str(path), fp16=0).get_frame(3))
    np.testing.assert_allclose(after, expected(second, frames, [1, 2, 3, 4, 5]), atol=1e-5)
    assert np.abs(after - before).max() > 1e-3


def test_a_shipped_model_by_its_short_name(frames):
    small = frames[:, :, :6, :7]
    by_default = planes(core.iedvr.Upscale(clip_of(small)).get_frame(2))
    by_name = planes(core.iedvr.Upscale(clip_of(small), model="default").get_frame(2))
    np.testing.assert_array_equal(by_name, by_default)
    with pytest.raises(vs.Error, match=r"does not exist; the shipped models are .*default-x2"):
        core.iedvr.Upscale(clip_of(small), model="no-such-model")


def test_replicate_border(network_and_model, frames):
    net, path = network_and_model
    out = core.iedvr.Upscale(clip_of(frames), model=path, border="replicate", fp16=0)
    np.testing.assert_allclose(planes(out.get_frame(0)), expected(net, frames, [0, 0, 0, 1, 2]),
                               atol=1e-5)


def test_scene_change_splits_the_window(network_and_model, frames):
    net, path = network_and_model
    # A cut between frames 3 and 4, marked on both sides as scene detectors do.
    props = {3: {"_SceneChangeNext": 1}, 4: {"_SceneChangePrev": 1}}
    clip = clip_of(frames, props=props)
    out = core.iedvr.Upscale(clip, model=path, fp16=0)
    np.testing.assert_allclose(planes(out.get_frame(3)), expected(net, frames, [1, 2, 3, 2, 1]),
                               atol=1e-5)
    np.testing.assert_allclose(planes(out.get_frame(4)), expected(net, frames, [6, 5, 4, 5, 6]),
                               atol=1e-5)
    ignoring = core.iedvr.Upscale(clip, model=path, scene_change=0, fp16=0)
    np.testing.assert_allclose(planes(ignoring.get_frame(3)), expected(net, frames, [1, 2, 3, 4, 5]),
                               atol=1e-5)


def test_frame_properties_of_the_centre_frame_are_kept(network_and_model, frames):
    _, path = network_and_model
    out = core.iedvr.Upscale(clip_of(frames, props={2: {"Marker": 42}}), model=path)
    assert out.get_frame(2).props["Marker"] == 42
    assert "Marker" not in out.get_frame(3).props


def test_rgbh_clip(network_and_model, frames):
    net, path = network_and_model
    out = core.iedvr.Upscale(clip_of(frames, format=vs.RGBH), model=path, fp16=0)
    assert out.format.id == vs.RGBH
    halves = frames.half().float()
    np.testing.assert_allclose(planes(out.get_frame(2)), expected(net, halves, [0, 1, 2, 3, 4]),
                               atol=5e-3)


def test_fp16_on_the_cpu_computes_in_bfloat16(network_and_model, frames):
    net, path = network_and_model
    out = planes(core.iedvr.Upscale(clip_of(frames), model=path, device_index=-1, fp16=1).get_frame(2))
    exact = expected(net, frames, [0, 1, 2, 3, 4])
    with torch.no_grad():
        bf16 = model_file.PaddedNetwork(IEDVR(SMALL).to(torch.bfloat16).eval())
        bf16.network.load_state_dict(net.state_dict())
        in_bf16 = bf16(frames[[0, 1, 2, 3, 4]][None].to(torch.bfloat16))[0].float().numpy()
    assert np.abs(out - exact).max() > 1e-4  # not computed in float32
    # As close to float32 as the network run eagerly in bfloat16 is, and close to that run.
    assert np.abs(out - exact).mean() < 2 * np.abs(in_bf16 - exact).mean()
    np.testing.assert_allclose(out, in_bf16, atol=3e-2)


def test_16_bit_is_the_cpu_default_where_the_cpu_computes_it(network_and_model, frames):
    # As OpenVINO does: bfloat16 by default on CPUs with AVX512-BF16 or AMX, float32 elsewhere.
    from vs_iedvr.precision import cpu_has_native_bfloat16

    _, path = network_and_model
    default = planes(core.iedvr.Upscale(clip_of(frames), model=path, device_index=-1).get_frame(2))
    native = cpu_has_native_bfloat16()
    chosen = planes(core.iedvr.Upscale(clip_of(frames), model=path, device_index=-1,
                                       fp16=int(native)).get_frame(2))
    other = planes(core.iedvr.Upscale(clip_of(frames), model=path, device_index=-1,
                                      fp16=int(not native)).get_frame(2))
    np.testing.assert_array_equal(default, chosen)
    assert not np.array_equal(default, other)


@pytest.mark.parametrize("forced", ["0", "1"])
def test_the_bfloat16_default_follows_iedvr_cpu_bfloat16(network_and_model, frames, monkeypatch,
                                                          forced):
    # CI's lesser-CPU leg tells the engine and Python alike that the CPU has no native bfloat16.
    from vs_iedvr.precision import cpu_has_native_bfloat16

    _, path = network_and_model
    monkeypatch.setenv("IEDVR_CPU_BFLOAT16", forced)
    assert cpu_has_native_bfloat16() == (forced == "1")
    default = planes(core.iedvr.Upscale(clip_of(frames), model=path, device_index=-1).get_frame(2))
    chosen = planes(core.iedvr.Upscale(clip_of(frames), model=path, device_index=-1,
                                       fp16=int(forced)).get_frame(2))
    np.testing.assert_array_equal(default, chosen)


def test_a_wrong_iedvr_cpu_bfloat16_is_an_error_that_names_it(network_and_model, frames,
                                                             monkeypatch):
    from vs_iedvr.precision import cpu_has_native_bfloat16

    _, path = network_and_model
    monkeypatch.setenv("IEDVR_CPU_BFLOAT16", "yes")
    with pytest.raises(ValueError, match="IEDVR_CPU_BFLOAT16 must be 0 or 1.*'yes'"):
        cpu_has_native_bfloat16()
    with pytest.raises(vs.Error, match='IEDVR_CPU_BFLOAT16 must be 0 or 1.*"yes"'):
        core.iedvr.Upscale(clip_of(frames), model=path, device_index=-1).get_frame(2)


# float32 on CUDA: cuDNN may run its convolutions in TF32 (torch's default), hence 5e-3.
@requires_cuda
@pytest.mark.parametrize("fp16, atol", [(0, 5e-3), (1, 2e-2)])
@pytest.mark.parametrize("num_streams", [1, 2])
def test_cuda_frames_equal_the_eager_network(network_and_model, frames, fp16, atol, num_streams):
    net, path = network_and_model
    out = core.iedvr.Upscale(clip_of(frames), model=path, device_index=0, fp16=fp16,
                             num_streams=num_streams)
    # Several frames in flight at once, so that streams run side by side.
    results = {n: planes(f) for n, f in enumerate(out.frames(prefetch=4))}
    for n in range(LENGTH):
        window = [reflect(n + k, 0, LENGTH - 1) for k in range(-2, 3)]
        np.testing.assert_allclose(results[n], expected(net, frames, window), atol=atol)


@requires_cuda
def test_cuda_tiles_equal_the_cpu_tiles(network_and_model, frames):
    _, path = network_and_model
    tiling = {"tilesize": [8, 6], "overlap": [2, 2]}
    cpu = core.iedvr.Upscale(clip_of(frames), model=path, device_index=-1, **tiling)
    cuda = core.iedvr.Upscale(clip_of(frames), model=path, device_index=0, fp16=0, **tiling)
    np.testing.assert_allclose(planes(cuda.get_frame(3)), planes(cpu.get_frame(3)), atol=5e-3)


def test_request_order_and_threads_do_not_change_frames(network_and_model, frames):
    _, path = network_and_model
    out = core.iedvr.Upscale(clip_of(frames), model=path)
    in_order = [planes(out.get_frame(n)) for n in range(LENGTH)]
    shuffled = list(range(LENGTH)) * 2
    random.Random(0).shuffle(shuffled)
    for num_streams in (1, 3):
        again = core.iedvr.Upscale(clip_of(frames), model=path, num_streams=num_streams)
        requests = [(n, again.get_frame_async(n)) for n in shuffled]
        for n, future in requests:
            np.testing.assert_array_equal(planes(future.result()), in_order[n])


BAD_CALLS = [
    ("yuv", lambda clip, model: core.iedvr.Upscale(core.std.BlankClip(format=vs.YUV420P8), model=model),
     "must be RGBS or RGBH.*core.resize"),
    ("integer_rgb", lambda clip, model: core.iedvr.Upscale(core.std.BlankClip(format=vs.RGB24), model=model),
     "must be RGBS or RGBH"),
    ("variable_size", lambda clip, model: core.iedvr.Upscale(
        core.std.Splice([core.std.BlankClip(format=vs.RGBS, width=8, height=8),
                         core.std.BlankClip(format=vs.RGBS, width=16, height=8)], mismatch=True),
        model=model), "constant format and size"),
    ("missing_model", lambda clip, model: core.iedvr.Upscale(clip, model="/nonexistent/model.pt"),
     "does not exist"),
    ("bad_border", lambda clip, model: core.iedvr.Upscale(clip, model=model, border="wrap"),
     "border must be"),
    ("bad_streams", lambda clip, model: core.iedvr.Upscale(clip, model=model, num_streams=0),
     "num_streams must be between 1 and 64"),
    ("bad_device", lambda clip, model: core.iedvr.Upscale(clip, model=model, device_index=-5),
     "device_index must be"),
    ("absent_gpu", lambda clip, model: core.iedvr.Upscale(clip, model=model, device_index=7),
     "device_index 7 is not available"),
]


@pytest.mark.parametrize("name, call, message", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_errors_are_vapoursynth_errors(network_and_model, frames, name, call, message):
    _, path = network_and_model
    clip = clip_of(frames)
    with pytest.raises(vs.Error, match=message):
        call(clip, path)
    # The process keeps working.
    assert core.iedvr.Upscale(clip, model=path).get_frame(0).width == 4 * WIDTH


def test_foreign_and_broken_model_files(network_and_model, frames, tmp_path):
    clip = clip_of(frames)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    with pytest.raises(vs.Error, match="cannot load the model"):
        core.iedvr.Upscale(clip, model=str(broken))
    foreign = tmp_path / "foreign.pt"
    with model_file.without_torchscript_deprecation():
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(vs.Error, match="not a vs-iedvr model file"):
        core.iedvr.Upscale(clip, model=str(foreign))


def test_vapoursynth_start_up_does_not_load_libtorch():
    script = textwrap.dedent("""
        import vapoursynth as vs
        assert hasattr(vs.core, "iedvr")
        maps = open("/proc/self/maps").read()
        print("libtorch" in maps)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_vspipe_writes_y4m_and_nothing_else(network_and_model, tmp_path):
    _, path = network_and_model
    script = tmp_path / "upscale.vpy"
    script.write_text(textwrap.dedent(f"""
        import vapoursynth as vs
        core = vs.core
        clip = core.std.BlankClip(format=vs.RGBS, width=12, height=8, length=3, color=[0.2, 0.5, 0.7])
        clip = core.iedvr.Upscale(clip, model={path!r})
        clip = core.resize.Bicubic(clip, format=vs.YUV444P8, matrix_s="709")
        clip.set_output()
    """))
    vspipe = str(Path(sys.executable).with_name("vspipe"))
    result = subprocess.run([vspipe, "-c", "y4m", str(script), "-"], capture_output=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    header, _, rest = result.stdout.partition(b"\n")
    assert header.startswith(b"YUV4MPEG2 ") and b" W48 H32 " in header and b" C444" in header
    frame_size = len(b"FRAME\n") + 3 * 48 * 32
    assert len(rest) == 3 * frame_size
    assert rest.count(b"FRAME\n") >= 3


@pytest.mark.parametrize("format", [vs.YUV420P8, vs.YUV420P10, vs.RGB24])
def test_python_upscale_round_trips_common_formats(network_and_model, frames, format):
    import vs_iedvr

    _, path = network_and_model
    rgb = clip_of(frames[:, :, :8, :12])
    if format == vs.RGB24:
        source = core.resize.Bicubic(rgb, format=format)
        manual = core.resize.Bicubic(core.iedvr.Upscale(core.resize.Bicubic(source, format=vs.RGBS),
                                                        model=path), format=format)
    else:
        source = core.resize.Bicubic(rgb, format=format, matrix_s="709")
        manual = core.resize.Bicubic(
            core.iedvr.Upscale(core.resize.Bicubic(source, format=vs.RGBS), model=path),
            format=format, matrix_s="709")
    out = vs_iedvr.upscale(source, model=path)
    assert out.format.id == format and (out.width, out.height) == (48, 32)
    for n in (0, 3):
        got, want = out.get_frame(n), manual.get_frame(n)
        for plane in range(out.format.num_planes):
            np.testing.assert_array_equal(np.asarray(got[plane]), np.asarray(want[plane]))


def test_python_upscale_matrix_from_props_then_argument(network_and_model, frames):
    import vs_iedvr

    _, path = network_and_model
    rgb = clip_of(frames[:, :, :8, :12])
    tagged = core.resize.Bicubic(rgb, format=vs.YUV444P16, matrix_s="709")  # sets _Matrix=1
    untagged = core.std.RemoveFrameProps(tagged, "_Matrix")
    from_props = vs_iedvr.upscale(tagged, model=path).get_frame(1)
    from_argument = vs_iedvr.upscale(untagged, model=path, matrix="709").get_frame(1)
    guessed = vs_iedvr.upscale(untagged, model=path).get_frame(1)  # small frames: BT.601
    for plane in range(3):
        np.testing.assert_array_equal(np.asarray(from_props[plane]), np.asarray(from_argument[plane]))
    assert not np.array_equal(np.asarray(from_props[1]), np.asarray(guessed[1]))
    with pytest.raises(vs.Error, match="YUV or RGB"):
        vs_iedvr.upscale(core.std.BlankClip(format=vs.GRAY8), model=path)


def smooth_frames(length=5, height=40, width=56):
    y, x = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    return torch.stack([torch.stack([0.5 + 0.3 * torch.sin(x / 4 + t), 0.5 + 0.3 * torch.cos(y / 5 - t),
                                     0.5 + 0.2 * torch.sin((x + y) / 6)]) for t in range(length)])


@pytest.fixture(scope="module")
def whole_smooth_frame(network_and_model):
    """Frame 2 of smooth_frames() upscaled whole, which every tiling below is compared with."""
    _, path = network_and_model
    return planes(core.iedvr.Upscale(clip_of(smooth_frames()), model=path, fp16=0).get_frame(2))


@pytest.mark.parametrize("tilesize, overlap", [([24, 16], [6, 4]), ([16], [4]), ([32, 24], [8, 8])])
def test_tiles_match_the_whole_frame_without_seams(network_and_model, whole_smooth_frame, tilesize,
                                                   overlap):
    _, path = network_and_model
    clip = clip_of(smooth_frames())
    whole = whole_smooth_frame
    tiled = planes(core.iedvr.Upscale(clip, model=path, tilesize=tilesize, overlap=overlap,
                                      fp16=0).get_frame(2))
    difference = tiled - whole
    # The network sees less context at tile borders (and per-tile channel statistics), so tiles
    # differ slightly from the whole frame; the cross-fade keeps that difference smooth: a seam
    # would be a step between neighbouring pixels. 0.005 is about one 8-bit level, on frames whose
    # values span 0.2 to 0.8.
    assert np.abs(difference).max() < 0.01
    assert np.abs(np.diff(difference, axis=2)).max() < 0.005
    assert np.abs(np.diff(difference, axis=1)).max() < 0.005


@pytest.mark.parametrize("arguments, message", [
    ({"tilesize": [4]}, "tilesize must be at least 8"),
    ({"tilesize": [16, 16, 16]}, "tilesize must have 1 or 2 values"),
    ({"tilesize": [16], "overlap": [8]}, "overlap must be at least 0 and less than half"),
    ({"overlap": [4]}, "overlap needs tilesize"),
])
def test_impossible_tiles_are_refused(network_and_model, frames, arguments, message):
    _, path = network_and_model
    with pytest.raises(vs.Error, match=message):
        core.iedvr.Upscale(clip_of(frames), model=path, **arguments)
