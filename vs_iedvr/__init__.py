"""vs-iedvr: temporal video super-resolution for VapourSynth (an improved EDVR).

Importing the package loads the compiled operators (torch.ops.iedvr.*).
"""

from .ops import modulated_deform_conv2d


def upscale(clip, **arguments):
    """core.iedvr.Upscale for clips of any YUV or RGB format: see vs_iedvr/any_format.py."""
    from .any_format import upscale as upscale_any_format  # imports vapoursynth only when used

    return upscale_any_format(clip, **arguments)


__all__ = ["modulated_deform_conv2d", "upscale"]
__version__ = "0.1.0"
