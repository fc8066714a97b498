"""vs-mlrt's runtimes on a network from `vs-iedvr export --format onnx`, with the plugin's rule for
the frames around each one.

    import vs_iedvr.mlrt
    clip = vs_iedvr.mlrt.upscale(clip, "iedvr-m-ov.onnx")                        # core.ov.Model
    clip = vs_iedvr.mlrt.upscale(clip, "iedvr-m-ov.onnx", tilesize=[324, 184], overlap=[8, 8])
    clip = vs_iedvr.mlrt.upscale(clip, "iedvr-m.engine", backend="trt", num_frames=5)   # core.trt

vs-mlrt feeds a network one frame of each of its `clips`, their planes joined in clip order. For a
window of T = 2R + 1 frames this builds T clips whose frame n is the window's frame n - R + t, the
way core.iedvr.Upscale picks them: frames past the clip's ends are filled by reflection (or
replication, border="replicate"), and, with scene_change, frames past a cut marked by
_SceneChangePrev / _SceneChangeNext are filled as if the cut were the clip's end. The result keeps
the properties of frame n (vs-mlrt's would carry those of its first clip, frame n - R).
"""

import os

import vapoursynth as vs

from .window import fold

core = vs.core

BACKENDS = {"ov": ("ov", "vapoursynth-mlrt-ov"), "trt": ("trt", "vapoursynth-mlrt-trt")}
BORDERS = ("reflect", "replicate")


def _error(message: str) -> vs.Error:
    return vs.Error(f"vs_iedvr.mlrt.upscale: {message}")


def shifted(clip: vs.VideoNode, k: int, radius: int, border: str) -> vs.VideoNode:
    """Frame n of the result is frame fold(n + k, 0, last) of `clip` (|k| <= radius). Away from the
    ends that is one trim; the at most `radius` frames at each end are picked one by one."""
    last = clip.num_frames - 1
    if clip.num_frames <= 2 * radius:
        return core.std.Splice([clip[fold(n + k, 0, last, border)] for n in range(clip.num_frames)])
    head = [clip[fold(n + k, 0, last, border)] for n in range(radius)]
    middle = clip[radius + k : clip.num_frames - radius + k]
    tail = [clip[fold(n + k, 0, last, border)] for n in range(clip.num_frames - radius, clip.num_frames)]
    return core.std.Splice(head + [middle] + tail)


def _marked(frame: vs.VideoFrame, key: str) -> bool:
    # As the plugin reads them: an integer property other than 0.
    value = frame.props.get(key)
    return isinstance(value, int) and value != 0


def window_clips(clip: vs.VideoNode, num_frames: int, border: str = "reflect",
                 scene_change: bool = True) -> list[vs.VideoNode]:
    """The `num_frames` clips whose frames n form the window of output frame n (see the module's
    docstring), in time order."""
    radius, last = num_frames // 2, clip.num_frames - 1
    fixed = [shifted(clip, k, radius, border) for k in range(-radius, radius + 1)]
    if not scene_change:
        return fixed

    def at_offset(k: int) -> vs.VideoNode:
        def select(n: int, f: list[vs.VideoFrame]) -> vs.VideoNode:
            # f[j] is frame n - radius + j wherever that lies inside the clip, which is all the
            # shot search below reads: the plugin's search, within the window.
            shot_start, shot_end = max(0, n - radius), min(last, n + radius)
            for i in range(n, shot_start, -1):
                if (_marked(f[i - n + radius], "_SceneChangePrev")
                        or _marked(f[i - 1 - n + radius], "_SceneChangeNext")):
                    shot_start = i
                    break
            for i in range(n, shot_end):
                if (_marked(f[i - n + radius], "_SceneChangeNext")
                        or _marked(f[i + 1 - n + radius], "_SceneChangePrev")):
                    shot_end = i
                    break
            # The folded index lies within the window and the clip, where fixed[j] holds frame
            # n - radius + j itself.
            return fixed[fold(n + k, shot_start, shot_end, border) - n + radius]

        return core.std.FrameEval(clip, select, prop_src=fixed)

    return [at_offset(k) for k in range(-radius, radius + 1)]


def _frames_of(network_path: str) -> int:
    """The window's frame count recorded in an ONNX file from `vs-iedvr export`."""
    from .onnx_export import MissingOnnxError, read_onnx_metadata

    try:
        return int(read_onnx_metadata(network_path)["num_frames"])
    except MissingOnnxError:
        raise _error("num_frames: reading it from the ONNX file needs the onnx package (pip "
                     "install onnx); or pass num_frames (5 for the shipped networks)") from None
    except (ValueError, KeyError) as error:
        raise _error(f"network_path: {error}; pass num_frames for networks from elsewhere") from None


def upscale(clip: vs.VideoNode, network_path: str | os.PathLike, backend: str = "ov",
            num_frames: int | None = None, border: str = "reflect", scene_change: bool = True,
            **backend_args) -> vs.VideoNode:
    """Upscales an RGBS clip with vs-mlrt: core.ov.Model (backend="ov") on an ONNX file from
    `vs-iedvr export --format onnx --target openvino`, or core.trt.Model (backend="trt") on a
    TensorRT engine built from `--target tensorrt`. num_frames: the window's size (None: read
    from the ONNX file). backend_args go to vs-mlrt as they are (tilesize, overlap, device,
    num_streams, fp16, config, ...)."""
    if not isinstance(clip, vs.VideoNode):
        raise _error(f"clip must be a vapoursynth.VideoNode, got {type(clip).__name__}")
    if clip.format.id != vs.RGBS or clip.width == 0 or clip.height == 0:
        raise _error(f"clip must be RGBS of one size (vs-mlrt feeds float32 planes), got "
                     f"{clip.format.name if clip.format.id != vs.NONE else 'a variable format'}"
                     f"; convert it first, e.g. core.resize.Bicubic(clip, format=vs.RGBS, "
                     f"matrix_in_s='709')")
    if backend not in BACKENDS:
        raise _error(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    namespace, package = BACKENDS[backend]
    if not hasattr(core, namespace):
        raise _error(f"backend={backend!r} needs vs-mlrt's core.{namespace}, which is not "
                     f"installed: pip install {package}")
    if not isinstance(network_path, (str, os.PathLike)):
        raise _error(f"network_path must be a path (str or os.PathLike), got "
                     f"{type(network_path).__name__}")
    network_path = os.fspath(network_path)
    if not os.path.isfile(network_path):
        raise _error(f"network_path {network_path!r} is not a file")
    if border not in BORDERS:
        raise _error(f"border must be one of {', '.join(BORDERS)}, got {border!r}")
    if not isinstance(scene_change, (bool, int)) or scene_change not in (0, 1):
        raise _error(f"scene_change must be a bool or 0/1, got {scene_change!r}")
    if num_frames is None:
        num_frames = _frames_of(network_path)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 \
            or num_frames % 2 == 0:
        raise _error(f"num_frames must be an odd int >= 1 (the network's window), got {num_frames!r}")

    clips = window_clips(clip, num_frames, border, bool(scene_change))
    upscaled = getattr(core, namespace).Model(clips, network_path, **backend_args)
    return core.std.CopyFrameProps(upscaled, clip)
