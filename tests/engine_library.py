"""The engine library (libiedvr_engine.so) driven through ctypes, as the VapourSynth filter drives
it, for the tests that look inside it."""

import ctypes
from pathlib import Path

import numpy as np

import vs_iedvr


class IedvrTiling(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("tile_width", "tile_height", "overlap_x", "overlap_y")]


class IedvrModelInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in ("scale", "num_frames", "fused_convolutions")]


class IedvrPlanes(ctypes.Structure):
    """Three planes by pointer and stride in bytes, as VapourSynth frames hand them out (the
    output planes have the same layout)."""
    _fields_ = [("data", ctypes.c_void_p * 3), ("stride", ctypes.c_ssize_t * 3)]


def planes_of(frame: np.ndarray) -> IedvrPlanes:
    """The planes of a [3, H, W] array, which may be a strided view."""
    return IedvrPlanes((ctypes.c_void_p * 3)(*(frame[c].ctypes.data for c in range(3))),
                       (ctypes.c_ssize_t * 3)(*(frame.strides[1] for _ in range(3))))


class Engine:
    """The engine library driven directly, as the VapourSynth filter drives it."""

    library = None

    def __init__(self, model, share_with=None, device=-1, precision=0):
        if Engine.library is None:
            lib = ctypes.CDLL(str(Path(vs_iedvr.__file__).parent / "libiedvr_engine.so"))
            lib.iedvr_engine_create.restype = ctypes.c_void_p
            lib.iedvr_engine_create.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int,
                                                ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
            lib.iedvr_engine_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(IedvrPlanes),
                                             ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int,
                                             ctypes.c_int, ctypes.POINTER(IedvrTiling),
                                             ctypes.POINTER(IedvrPlanes), ctypes.c_char_p,
                                             ctypes.c_size_t]
            lib.iedvr_engine_feature_counts.argtypes = [ctypes.c_void_p] + 2 * [ctypes.POINTER(ctypes.c_ulonglong)]
            lib.iedvr_engine_block_counts.argtypes = 3 * [ctypes.POINTER(ctypes.c_ulonglong)]
            lib.iedvr_engine_destroy.argtypes = [ctypes.c_void_p]
            lib.iedvr_engine_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(IedvrModelInfo)]
            Engine.library = lib
        error = ctypes.create_string_buffer(1024)
        self.handle = self.library.iedvr_engine_create(
            str(model).encode(), device, precision, share_with.handle if share_with else None,
            error, 1024)
        assert self.handle, error.value.decode()

    def run(self, window: np.ndarray, numbers: list[int], tiling=(0, 0, 0, 0)) -> np.ndarray:
        """window: [T, 3, H, W] float32 (any row stride, rows contiguous)."""
        assert window.dtype == np.float32 and window.strides[-1] == 4
        out = np.empty((3, window.shape[-2] * 4, window.shape[-1] * 4), np.float32)
        frames = (IedvrPlanes * len(window))(*(planes_of(frame) for frame in window))
        error = ctypes.create_string_buffer(1024)
        status = self.library.iedvr_engine_run(
            self.handle, frames, (ctypes.c_int * len(numbers))(*numbers), 0,
            window.shape[-1], window.shape[-2], ctypes.byref(IedvrTiling(*tiling)),
            ctypes.byref(planes_of(out)), error, 1024)
        assert status == 0, error.value.decode()
        return out

    def info(self) -> IedvrModelInfo:
        info = IedvrModelInfo()
        self.library.iedvr_engine_info(self.handle, ctypes.byref(info))
        return info

    def counts(self) -> tuple[int, int]:
        computed, reused = ctypes.c_ulonglong(), ctypes.c_ulonglong()
        self.library.iedvr_engine_feature_counts(self.handle, ctypes.byref(computed), ctypes.byref(reused))
        return computed.value, reused.value

    def __del__(self):
        if getattr(self, "handle", None):
            self.library.iedvr_engine_destroy(self.handle)


def block_counts() -> tuple[int, int, int]:
    """Process-wide: (large blocks allocated anew, blocks reused, bytes held idle)."""
    if Engine.library is None:
        raise RuntimeError("create an Engine first")
    values = [ctypes.c_ulonglong() for _ in range(3)]
    Engine.library.iedvr_engine_block_counts(*(ctypes.byref(v) for v in values))
    return tuple(v.value for v in values)
