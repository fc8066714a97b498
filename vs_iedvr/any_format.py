"""vs_iedvr.upscale: the filter for clips of any common format.

    import vs_iedvr
    clip = vs_iedvr.upscale(clip)              # YUV or RGB, 8 to 16 bit or float
    clip = vs_iedvr.upscale(clip, scene_detect=True)   # for clips whose cuts are not marked

Takes every argument of core.iedvr.Upscale, with the same names; the ones left at None are not
passed, so the filter's own defaults apply. Converts to float RGB (the filter's input), calls
core.iedvr.Upscale and converts back to the input's format at the new size. The YUV matrix comes
from the clip's _Matrix property, then from the `matrix` argument, then from the frame size
(BT.709 from 1280x720 up, BT.601 below); the result goes back through the same matrix. A YUV
clip's range comes back as it went in: full range (_Range=FULL, as phones and screen captures
often give) stays full, with its _Range, as every resize-based wrapper keeps it.

scene_detect=True marks scene cuts the way misc.SCDetect does (that plugin is no longer part of
VapourSynth's core): a frame starts a new scene when the mean absolute difference of its luma from
the previous frame's, on [0, 1], is above sc_threshold. The comparison runs on a float luma copy
at a quarter of the size; its _SceneChangePrev/_SceneChangeNext replace those of the clip fed to
the filter, whose windows then stop at the cuts.
"""

import os

import vapoursynth as vs

core = vs.core

UNSPECIFIED_MATRIX = 2
# resize's names for matrix_s (zimg's), so that a bad `matrix` is refused under its own name.
MATRIX_NAMES = ("rgb", "709", "unspec", "fcc", "470bg", "170m", "240m", "ycgco", "2020ncl",
                "2020cl", "chromancl", "chromacl", "ictcp")
SCENE_CHANGE_PROPS = ["_SceneChangePrev", "_SceneChangeNext"]


def _error(message: str) -> vs.Error:
    return vs.Error(f"vs_iedvr.upscale: {message}")


def _type_name(value) -> str:
    return type(value).__name__


def _is_int(value) -> bool:
    # bool is a subclass of int, but num_streams=True is a mistake, not a count.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_clip(clip) -> None:
    if not isinstance(clip, vs.VideoNode):
        raise _error(f"clip must be a vapoursynth.VideoNode, got {_type_name(clip)}")
    # A clip spliced from different formats or sizes reports format id NONE and size 0.
    if clip.format.id == vs.NONE or clip.width == 0 or clip.height == 0:
        raise _error("clip must have a constant format and size; resize it to one format and "
                     "size first")
    if clip.format.color_family not in (vs.YUV, vs.RGB):
        raise _error(f"clip must be YUV or RGB, got {clip.format.name}; for GRAY, convert to YUV "
                     "or RGB first")


def _flag(name: str, value) -> int | None:
    """A bool-ish argument as the filter's int: bool or int 0/1; None stays not given."""
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return int(value)
    raise _error(f"{name} must be a bool or 0/1, got {value!r}")


def _integer(name: str, value) -> int | None:
    if value is not None and not _is_int(value):
        raise _error(f"{name} must be an int, got {_type_name(value)} {value!r}")
    return value


def _pair(name: str, value) -> list[int] | None:
    """tilesize/overlap: an int or a list of 1 or 2 ints, as the filter's int[]."""
    if value is None:
        return None
    values = [value] if _is_int(value) else value
    if not isinstance(values, (list, tuple)) or not 1 <= len(values) <= 2 or not all(map(_is_int, values)):
        raise _error(f"{name} must be an int or a list of 1 or 2 ints ([w, h]), got {value!r}")
    return list(values)


def _model(value) -> str | bytes | None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise _error(f"model must be a path (str or os.PathLike), got {_type_name(value)}")
    return None if value is None else os.fspath(value)


def _string(name: str, value, choices: tuple[str, ...] | None = None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _error(f"{name} must be a str, got {_type_name(value)}")
    if value is not None and choices is not None and value not in choices:
        raise _error(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _threshold(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise _error(f"sc_threshold must be a float in (0, 1], got {value!r}")
    return float(value)


def _yuv_arguments(clip: vs.VideoNode, matrix: str | None) -> tuple[dict, dict]:
    """resize's arguments into RGB and back to YUV, read from the first frame: the clip's own
    _Matrix when its frames carry one, else `matrix`, else a guess from the size; and its _Range,
    which resize reads on the way in but would not restore on the way back (it writes limited
    range unless told)."""
    props = clip.get_frame(0).props
    own = props.get("_Matrix", UNSPECIFIED_MATRIX)
    if own != UNSPECIFIED_MATRIX:
        to_rgb, from_rgb = {}, {"matrix": own}
    else:
        name = matrix if matrix is not None else ("709" if clip.width >= 1280 or clip.height >= 720 else "170m")
        to_rgb, from_rgb = {"matrix_in_s": name}, {"matrix_s": name}
    if "_Range" in props:  # without it resize takes limited range both ways
        from_rgb["range"] = int(props["_Range"])
    return to_rgb, from_rgb


def _small_luma(clip: vs.VideoNode) -> vs.VideoNode:
    """Float luma on [0, 1] at a quarter of the size: whole-picture differences barely change,
    and float makes the threshold independent of bit depth and range. The matrix for RGB only
    weighs the channels (any is fine for finding cuts)."""
    to_gray = {"matrix_s": "709"} if clip.format.color_family == vs.RGB else {}
    return core.resize.Bilinear(clip, max(clip.width // 4, 1), max(clip.height // 4, 1),
                                format=vs.GRAYS, **to_gray)


def _detect_scene_changes(clip: vs.VideoNode, threshold: float) -> vs.VideoNode:
    """A small clip whose frames carry _SceneChangePrev/_SceneChangeNext, as misc.SCDetect sets
    them: PlaneStatsDiff against the previous and the next frame, above `threshold`."""
    luma = _small_luma(clip)
    if luma.num_frames == 1:
        return core.std.SetFrameProps(luma, _SceneChangePrev=0, _SceneChangeNext=0)
    # Frame n against n-1 and against n+1; the ends are compared with themselves (difference 0).
    previous = core.std.PlaneStats(luma, luma[0] + luma[:-1])
    following = core.std.PlaneStats(luma, luma[1:] + luma[-1])

    def mark(n, f):  # ModifyFrame passes n and f by name
        out = f[0].copy()
        out.props["_SceneChangePrev"] = int(f[0].props["PlaneStatsDiff"] > threshold)
        out.props["_SceneChangeNext"] = int(f[1].props["PlaneStatsDiff"] > threshold)
        return out

    return core.std.ModifyFrame(previous, [previous, following], mark)


def upscale(clip: vs.VideoNode, model: str | os.PathLike | None = None, scale: int | None = None,
            device_index: int | None = None, fp16: bool | None = None,
            num_streams: int | None = None, tilesize: int | list[int] | None = None,
            overlap: int | list[int] | None = None, border: str | None = None,
            scene_change: bool | None = None, matrix: str | None = None,
            scene_detect: bool = False, sc_threshold: float = 0.1) -> vs.VideoNode:
    """Upscales `clip` with core.iedvr.Upscale whatever its format (see the module's docstring).
    model .. scene_change are the filter's arguments (None: the filter's default); matrix,
    scene_detect and sc_threshold are this function's."""
    _check_clip(clip)
    arguments = dict(model=_model(model), scale=_integer("scale", scale),
                     device_index=_integer("device_index", device_index), fp16=_flag("fp16", fp16),
                     num_streams=_integer("num_streams", num_streams),
                     tilesize=_pair("tilesize", tilesize), overlap=_pair("overlap", overlap),
                     border=_string("border", border), scene_change=_flag("scene_change", scene_change))
    options = {name: value for name, value in arguments.items() if value is not None}
    matrix = _string("matrix", matrix, MATRIX_NAMES)
    scene_detect = _flag("scene_detect", scene_detect)
    threshold = _threshold(sc_threshold)
    if scene_detect and options.get("scene_change") == 0:
        raise _error("scene_detect=True marks cuts that scene_change=0 tells the filter to ignore; "
                     "drop one of them")

    convert = clip.format.id not in (vs.RGBS, vs.RGBH)
    if convert:
        float_rgb = vs.RGBH if clip.format.sample_type == vs.FLOAT and clip.format.bits_per_sample == 16 else vs.RGBS
        to_rgb, from_rgb = _yuv_arguments(clip, matrix) if clip.format.color_family == vs.YUV else ({}, {})
        rgb = core.resize.Bicubic(clip, format=float_rgb, **to_rgb)
    else:
        rgb = clip
    if scene_detect:
        rgb = core.std.CopyFrameProps(rgb, _detect_scene_changes(clip, threshold),
                                      props=SCENE_CHANGE_PROPS)
    upscaled = core.iedvr.Upscale(rgb, **options)
    return core.resize.Bicubic(upscaled, format=clip.format.id, **from_rgb) if convert else upscaled
