"""RGBS clips made from frames in memory and read back into it: how the benchmark and the
evaluation feed the plugin, as a user's script would, without files."""

import numpy as np


def clip_of(frames: np.ndarray):
    """An RGBS clip whose frame n holds frames[n], an array [N, 3, H, W] of float32."""
    import vapoursynth as vs

    length, _, height, width = frames.shape
    blank = vs.core.std.BlankClip(format=vs.RGBS, width=width, height=height, length=length)

    def fill(n, f):
        out = f.copy()
        for plane in range(3):
            np.asarray(out[plane])[:] = frames[n, plane]
        return out

    return vs.core.std.ModifyFrame(blank, blank, fill)


def frames_of(clip) -> np.ndarray:
    """Every frame of an RGB clip as float32 [N, 3, H, W]."""
    return np.stack([np.stack([np.asarray(frame[plane], dtype=np.float32) for plane in range(3)])
                     for frame in clip.frames()])
