"""vs-iedvr: temporal video super-resolution for VapourSynth (an improved EDVR).

Importing the package imports neither torch nor vapoursynth (a command line's argument error is
answered at once; vs_iedvr.upscale needs no torch). vs_iedvr.modulated_deform_conv2d, or importing
vs_iedvr.ops (which every module that computes imports), loads the compiled operators
(torch.ops.iedvr.*).
"""


def upscale(clip, model=None, scale=None, device_index=None, fp16=None, num_streams=None,
            tilesize=None, overlap=None, border=None, scene_change=None, matrix=None,
            scene_detect=False, sc_threshold=0.1):
    """core.iedvr.Upscale for clips of any YUV or RGB format, with the filter's arguments (None:
    the filter's default) and optional scene-cut detection: see vs_iedvr/any_format.py."""
    # Written out rather than **arguments so that help() and inspect show the arguments without
    # importing vapoursynth, which is imported only when upscale is called.
    from .any_format import upscale as upscale_any_format

    return upscale_any_format(clip, model=model, scale=scale, device_index=device_index, fp16=fp16,
                              num_streams=num_streams, tilesize=tilesize, overlap=overlap,
                              border=border, scene_change=scene_change, matrix=matrix,
                              scene_detect=scene_detect, sc_threshold=sc_threshold)


def __getattr__(name):
    if name == "modulated_deform_conv2d":  # loads torch and the operators on first use
        from .ops import modulated_deform_conv2d

        return modulated_deform_conv2d
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["modulated_deform_conv2d", "upscale"]
__version__ = "0.1.0"
