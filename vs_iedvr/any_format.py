"""vs_iedvr.upscale: the filter for clips of any common format.

    import vs_iedvr
    clip = vs_iedvr.upscale(clip)              # YUV or RGB, 8 to 16 bit or float

Converts to float RGB (the filter's input), calls core.iedvr.Upscale and converts back to the
input's format at the new size. The YUV matrix comes from the clip's _Matrix property, then from
the `matrix` argument, then from the frame size (BT.709 from 1280x720 up, BT.601 below); the
result goes back through the same matrix.
"""

import vapoursynth as vs

core = vs.core

UNSPECIFIED_MATRIX = 2


def _matrix_arguments(clip: vs.VideoNode, matrix: str | None) -> tuple[dict, dict]:
    """resize's matrix arguments into RGB and back to YUV: the clip's own _Matrix when its frames
    carry one (read from the first frame), else `matrix`, else a guess from the size."""
    own = clip.get_frame(0).props.get("_Matrix", UNSPECIFIED_MATRIX)
    if own != UNSPECIFIED_MATRIX:
        return {}, {"matrix": own}
    name = matrix if matrix is not None else ("709" if clip.width >= 1280 or clip.height >= 720 else "170m")
    return {"matrix_in_s": name}, {"matrix_s": name}


def upscale(clip: vs.VideoNode, model: str | None = None, device_index: int | None = None,
            fp16: bool | None = None, border: str = "reflect", scene_change: bool = True,
            matrix: str | None = None) -> vs.VideoNode:
    """Upscales `clip` with core.iedvr.Upscale whatever its format (see the module's docstring);
    the other arguments are the filter's."""
    if not isinstance(clip, vs.VideoNode):
        raise vs.Error(f"vs_iedvr.upscale: clip must be a vapoursynth.VideoNode, got {type(clip).__name__}")
    if clip.format is None or clip.width == 0 or clip.height == 0:
        raise vs.Error("vs_iedvr.upscale: clip must have a constant format and size")
    family = clip.format.color_family
    if family not in (vs.YUV, vs.RGB):
        raise vs.Error(f"vs_iedvr.upscale: clip must be YUV or RGB, got {clip.format.name}; for "
                       "GRAY, convert to YUV or RGB first")
    options = {k: v for k, v in dict(model=model, device_index=device_index,
                                     fp16=None if fp16 is None else int(fp16), border=border,
                                     scene_change=int(scene_change)).items() if v is not None}
    if clip.format.id in (vs.RGBS, vs.RGBH):
        return core.iedvr.Upscale(clip, **options)
    float_rgb = vs.RGBH if clip.format.sample_type == vs.FLOAT and clip.format.bits_per_sample == 16 else vs.RGBS
    to_rgb, from_rgb = _matrix_arguments(clip, matrix) if family == vs.YUV else ({}, {})
    rgb = core.resize.Bicubic(clip, format=float_rgb, **to_rgb)
    upscaled = core.iedvr.Upscale(rgb, **options)
    return core.resize.Bicubic(upscaled, format=clip.format.id, **from_rgb)
