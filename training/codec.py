"""Low-resolution clips passed through a real video codec, as users' sources are.

A sample's low-resolution frames are encoded as one clip with x264 (in-process, through PyAV's
libx264, about 11 ms for five 48x48 frames on one core) at a random CRF, in YUV 4:2:0 as real
sources are, and decoded again: the network then learns from the codec's blocks, ringing and
chroma subsampling, and from its temporal structure (the frames are predicted from each other as
in a real stream, with its I, P and B frames), not from a per-frame approximation.

The window is encoded after a lead-in of earlier frames (CODEC_LEAD_IN), so that its frames are
coded as in the middle of a stream, and with a margin around the patch, cut at a random offset
afterwards, so that the codec's 16x16 macroblock grid does not always meet the patch's edges.
"""

import io

import numpy as np
import torch

CODEC_MARGIN = 16  # low-resolution pixels of context on each side: a whole macroblock
# Frames encoded before a sample's window. A window encoded alone starts with an I-frame, which a
# user's clip has once in hundreds of frames, and with the rate control's first decisions: at CRF 28
# its centre frame differs from the same frame coded within the clip by 0.74 dB on average (either
# way), after 8 frames of lead-in by 0.58, after 32 by 0.20 but with 37 frames to encode for 5
# (benchmarks/codec_lead_in.py, the training clips).
CODEC_LEAD_IN = 8


def encode_decode(frames: np.ndarray, crf: float, codec: str = "libx264",
                  preset: str = "medium") -> np.ndarray:
    """[T, H, W, 3] uint8 RGB frames (H, W even) through the encoder at `crf` in YUV 4:2:0 and back."""
    import av  # training-only dependency (the `train` extra)

    count, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 needs even frame sizes, got {width}x{height}")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One thread: the data loader's workers are the parallelism.
        stream.options = {"crf": f"{crf:g}", "preset": preset, "threads": "1"}
        if codec == "libx264":
            # Without MB-tree: with it, this x264 encodes the same frames differently from one run
            # to the next (seen from about 30 frames on, even on one thread), and evaluations of
            # whole clips would not repeat.
            stream.options |= {"x264-params": "log-level=none:mbtree=0"}
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index  # timestamps for the rate control, as a real stream has
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():  # flush the frames the encoder holds back
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if len(decoded) != count:
        raise RuntimeError(f"{codec} returned {len(decoded)} of {count} frames")
    return np.stack(decoded)


def compress(low: torch.Tensor, crf: float) -> torch.Tensor:
    """[T, 3, H, W] frames in [0, 1] through x264 at `crf` (4:2:0) and back, as floats in [0, 1]."""
    frames = (low.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    decoded = encode_decode(frames.numpy(), crf)
    return torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 255
