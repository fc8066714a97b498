"""vs-iedvr: temporal video super-resolution for VapourSynth (an improved EDVR).

Importing the package loads the compiled operators (torch.ops.iedvr.*).
"""

from .ops import modulated_deform_conv2d

__all__ = ["modulated_deform_conv2d"]
__version__ = "0.1.0"
