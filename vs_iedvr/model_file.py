"""The model file: one TorchScript archive that holds the traced network (with the padding that
lets it take any frame size) and a JSON metadata entry. It is everything the plugin needs.

    export_model(net, "model.pt", weights={"source": "..."})
    model, metadata = load_model("model.pt")
    upscaled = model(frames)       # [B, T, 3, H, W] float RGB in [0, 1], any H and W
"""

import contextlib
import copy
import json
import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, model_zoo
from .arguments import first_line  # noqa: F401  (also model_file.first_line to its users)
from .network import SIZE_MULTIPLE, IEDVR, NetworkConfig, count_parameters

FORMAT = "vs-iedvr-model"
FORMAT_VERSION = 1
METADATA_ENTRY = "vs_iedvr.json"
# The size the network is traced at; nothing about it is baked in (the tests check other sizes).
TRACE_SIZE = (32, 48)


class ModelFileError(ValueError):
    """A model file (or a checkpoint) that is missing, unreadable, damaged or not what it should
    be."""


SHIPPED_DIR = Path(__file__).parent / "models"


def shipped_or_path(text: str) -> Path:
    """A path, or the bare name of a shipped model file (default.pt, default-x2.pt) or of a
    fetched official model (edvr-m, `vs-iedvr fetch`) that no file of that name in the working
    directory shadows: what `--from-model` and `--init` accept."""
    path = Path(text)
    shipped = SHIPPED_DIR / path.name
    if not path.exists() and path.name == text and shipped.is_file():
        return shipped
    if not path.exists() and path.name == text and model_zoo.find(text) is not None:
        fetched = model_zoo.installed_path(text)
        if not fetched.is_file():
            raise ModelFileError(f"{text} is an official model that is not fetched yet: run "
                                 f"`{model_zoo.fetch_command(text)}` (it installs {fetched})")
        return fetched
    return path


@contextlib.contextmanager
def without_torchscript_deprecation():
    """torch >= 2.14 warns that TorchScript is deprecated; the C++ plugin needs it, so the warning
    says nothing to our users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated")
        yield


def script(function):
    with without_torchscript_deprecation():
        return torch.jit.script(function)


@script
def pad_frames(frames: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicates the last row and column up to a multiple of `multiple`. Scripted so that the
    amounts are computed from the input's size at run time, not fixed in the trace."""
    pad_h = (multiple - frames.size(3) % multiple) % multiple
    pad_w = (multiple - frames.size(4) % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        # A new tensor even then: returning the input itself would make the tracer route later
        # uses of the input (the crop size) through this call.
        return frames.clone()
    padded = F.pad(frames.flatten(0, 1), [0, pad_w, 0, pad_h], mode="replicate")
    return padded.unflatten(0, [frames.size(0), frames.size(1)])


@script
def crop_output(output: torch.Tensor, frames: torch.Tensor, scale: int) -> torch.Tensor:
    return output[:, :, : frames.size(-2) * scale, : frames.size(-1) * scale]


class PaddedNetwork(nn.Module):
    """The network for frames of any size: pads to a multiple of 4, upscales, crops.

    Besides `forward` (a window of frames in, the upscaled centre frame out), the model file holds
    the network's two halves, so that the plugin extracts each input frame's features once and
    reuses them in the 2N+1 windows that contain the frame:
        features(frames [N, 3, H, W]) -> (l1, l2, l3, t1, t2, t3): the pyramid of each frame,
            padded, and the frame's share of each level's first alignment convolution;
        upscale(l1, l2, l3, t1, t2, t3 [B, T, C, h, w], centre [B, 3, H, W]) -> [B, 3, H*s, W*s].
    The plugin treats the features as opaque: whatever `features` returns for each frame, it
    stacks along T and passes to `upscale` in the same order.
    """

    def __init__(self, network: IEDVR):
        super().__init__()
        self.network = network
        self.scale = network.config.scale
        self.multiple = network.config.size_multiple

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        padded = pad_frames(frames, self.multiple)
        return crop_output(self.network(padded), frames, self.scale)

    def features(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        padded = pad_frames(frames.unsqueeze(0), self.multiple).squeeze(0)
        return self.network.frame_features(padded)

    def upscale(self, l1: torch.Tensor, l2: torch.Tensor, l3: torch.Tensor, t1: torch.Tensor,
                t2: torch.Tensor, t3: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        padded = pad_frames(centre.unsqueeze(1), self.multiple).squeeze(1)
        return crop_output(self.network.reconstruct(l1, l2, l3, padded, [t1, t2, t3]), centre,
                           self.scale)


def weights_checksum(module: nn.Module) -> str:
    """CRC-32 of the weights as stored: every parameter and buffer, sorted by name, its raw bytes
    (the engine computes the same in C++). Written into the metadata by the exporter and checked
    by every loader, so that a damaged file is named as damaged instead of giving garbage frames."""
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    crc = 0
    for name in sorted(tensors):
        data = tensors[name].detach().cpu().contiguous()
        crc = zlib.crc32(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"", crc)
    return f"{crc:08x}"


def metadata_for(network: IEDVR, arch: str, weights: dict) -> dict:
    config = network.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "config": config.to_dict(),
        "scale": config.scale,
        "num_frames": config.num_frame,
        "input": {"layout": "[batch, frames, 3, height, width]", "colour_space": "RGB",
                  "range": [0.0, 1.0], "dtype": "float32 (convertible to float16/bfloat16)"},
        "parameters": count_parameters(network),
        "weights": weights,
        "vs_iedvr_version": __version__,
        "torch_version": torch.__version__,
    }


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# The weights' provenance in the metadata of a file exported without weights.
UNTRAINED = {"source": "untrained (random initialisation)"}


def export_model(network: IEDVR, path, arch: str, weights: dict | None = None,
                 weights_dtype: str = "float32") -> dict:
    """Traces `network` (float32, CPU, eval mode) and writes it with its metadata to `path`, its
    weights stored as `weights_dtype` (float16 halves the file; loaders compute in float32 or
    convert as they need)."""
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights_dtype must be one of {sorted(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    # A copy: the trace shares its parameters, and converting them must not touch the caller's.
    network = copy.deepcopy(network).eval().float().cpu()
    padded = PaddedNetwork(network)
    example = torch.rand(1, network.config.num_frame, 3, *TRACE_SIZE)
    with torch.no_grad():
        levels = [level.unflatten(0, (1, -1)) for level in padded.features(example[0])]
    methods = {"forward": (example,), "features": (example[0],),
               "upscale": (*levels, example[:, network.config.center])}
    with torch.no_grad(), without_torchscript_deprecation():
        traced = torch.jit.trace_module(padded, methods, check_trace=False)
    traced = traced.to(WEIGHT_DTYPES[weights_dtype])
    metadata = metadata_for(network, arch, weights or dict(UNTRAINED))
    metadata["weights_dtype"] = weights_dtype
    metadata["weights_crc32"] = weights_checksum(traced)
    with without_torchscript_deprecation(), written_atomically(path) as temporary:
        torch.jit.save(traced, str(temporary), _extra_files={METADATA_ENTRY: json.dumps(metadata)})
    return metadata


@contextlib.contextmanager
def written_atomically(path):
    """Yields a temporary path beside `path` to write to; afterwards moves it to `path`, so that a
    half-written file never stands under the real name. An output that is a folder is refused
    before anything is written, and the temporary file is removed whatever fails."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give the path of the file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_metadata(path) -> dict:
    """The metadata of a model file, checked; raises ModelFileError for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a model file" if path.is_dir() else (
            "is not a regular file" if path.exists() else "does not exist")
        raise ModelFileError(f"model file {path} {what}")
    try:
        with zipfile.ZipFile(path) as archive:
            # Every entry against its CRC-32 first: torch.jit.load checks none, and a damaged
            # entry can make it fail in odd ways (a damaged data.pkl asked for memory until the
            # kernel killed the process) or load quietly (a damaged debug entry).
            damaged = archive.testzip()
            entries = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_ENTRY}")]
            raw = archive.read(entries[0]) if entries and damaged is None else None
    except Exception as error:  # zipfile raises many types for damage (BadZipFile, EOFError,
        # UnicodeDecodeError for a damaged name, NotImplementedError for a damaged method, ...)
        raise ModelFileError(f"{path} is not a vs-iedvr model file (not a readable TorchScript "
                             f"archive: {first_line(error)}); export one with `python -m vs_iedvr "
                             "export`") from None
    if damaged is not None:
        raise ModelFileError(f"{path} is damaged: its entry {damaged} fails its CRC-32 check; "
                             "download or export the model again")
    if raw is None:
        raise ModelFileError(f"{path} is a TorchScript archive without vs-iedvr metadata; export "
                             "the model with `python -m vs_iedvr export`")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: its metadata is not valid JSON ({error})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: its metadata is nested deeper than any vs-iedvr writes; "
                             "the file is damaged or was not written by vs-iedvr") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        format_name = metadata.get("format") if isinstance(metadata, dict) else None
        raise ModelFileError(f"{path} is not a vs-iedvr model file (format {format_name!r})")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {metadata['format_version']}; this "
                             f"vs-iedvr ({__version__}) reads up to {FORMAT_VERSION}: upgrade it")
    check_fields(path, metadata)
    return metadata


def check_fields(path, metadata: dict) -> None:
    """The fields that loading relies on, with the ranges the C++ engine accepts
    (csrc/engine/model_metadata.h); the network's config, where there is one, must agree."""
    scale, frames = metadata.get("scale"), metadata.get("num_frames")
    if type(scale) is not int or not 1 <= scale <= 8:
        raise ModelFileError(f"{path}: its metadata field \"scale\" is {scale!r}; expected a "
                             "whole number from 1 to 8")
    if type(frames) is not int or not 1 <= frames <= 15 or frames % 2 == 0:
        raise ModelFileError(f"{path}: its metadata field \"num_frames\" is {frames!r}; expected "
                             "an odd number from 1 to 15 (the centre frame and as many on each side)")
    checksum = metadata.get("weights_crc32")
    if type(checksum) is not str or not re.fullmatch("[0-9a-f]{8}", checksum):
        # Every model file carries it (vs-iedvr export has written it since format version 1
        # was released): a file without it, or with another type, cannot be checked and is not
        # loaded unchecked.
        found = "missing" if checksum is None else json.dumps(checksum)
        raise ModelFileError(f"{path}: its metadata field \"weights_crc32\" is {found}; expected "
                             "the weights' CRC-32 as 8 hexadecimal digits, as `vs-iedvr export` "
                             "writes it: export the model again")
    config = metadata.get("config")
    if isinstance(config, dict) and (config.get("num_frame"), config.get("scale")) != (frames, scale):
        raise ModelFileError(f"{path}: its metadata contradicts itself: num_frames {frames} and "
                             f"scale {scale}, but its network's config says num_frame "
                             f"{config.get('num_frame')!r} and scale {config.get('scale')!r}")


def load_model(path, device="cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """The traced network of a model file, in float32 on `device`, and its metadata; raises
    ModelFileError for a file that is damaged (its zip entries' or its weights' checksum), is no
    model file, or whose metadata does not describe its network."""
    metadata = read_metadata(path)
    try:
        with without_torchscript_deprecation():
            model = torch.jit.load(str(path), map_location=device)
    except Exception as error:  # RuntimeError mostly; UnicodeDecodeError, MemoryError too
        raise ModelFileError(f"{path} could not be loaded ({first_line(error)}); the file may be "
                             "truncated: export it again") from None
    recorded = metadata["weights_crc32"]  # present and well-formed: read_metadata checks it
    if recorded != weights_checksum(model):
        raise ModelFileError(f"{path} is damaged: its weights' checksum is {weights_checksum(model)}, "
                             f"its metadata says {recorded}; download or export the model again")
    model = model.float().eval()
    check_network_matches_metadata(model, metadata, path, device)
    return model, metadata


# The probe window's side: the smallest the network takes unpadded (its pyramid halves it twice),
# so that the probe costs milliseconds even for edvr-l.
PROBE_SIDE = SIZE_MULTIPLE


def check_network_matches_metadata(model, metadata: dict, path, device="cpu") -> None:
    """The metadata's frame count and scale against what the traced network computes, on a tiny
    window of random frames. A traced network indexes the frames it was traced for: given more,
    it ignores the rest and returns a plausible, wrong frame; so the window's first and last
    frames must both change the output, and the output must be the input's size times the scale.
    (The C++ engine makes the same check.)"""
    frames, scale = metadata["num_frames"], metadata["scale"]
    window = probe_window(frames, device)
    try:
        output = run_probe(model, window)
    except Exception as error:  # what a traced graph raises for a window it cannot take
        raise ModelFileError(f"{path}: its metadata says {frames} input frames, but its network "
                             + frames_read(model, device, f"fails on {frames} ({first_line(error)})")
                             ) from None
    if output.dim() != 4 or output.shape[:2] != (1, 3):
        raise ModelFileError(f"{path}: its metadata says {frames} input frames, but its network "
                             + frames_read(model, device, f"returns {list(output.shape)} for "
                                                          f"{frames}, not one RGB frame"))
    height, width = output.shape[2:]
    if (height, width) != (PROBE_SIDE * scale, PROBE_SIDE * scale):
        computed = (f"x{width // PROBE_SIDE}" if height == width and width % PROBE_SIDE == 0 else
                    f"{PROBE_SIDE}x{PROBE_SIDE} input to {width}x{height}")
        raise ModelFileError(f"{path}: its metadata says scale {scale}, but its network "
                             f"upscales {computed}")
    if frames > 1 and not any(reads_frame(model, window, index, output)
                              for index in range(frames) if index != frames // 2):
        # Not a network made for fewer frames (that one reads its first frames, not the
        # centre): weights that ignore the neighbours, as all-zero ones do.
        raise ModelFileError(f"{path}: its network's output depends on no frame but the centre "
                             f"one of its {frames} input frames: its weights are all zero, or "
                             "untrained to use the neighbours; export trained weights")
    for index in (frames - 1, 0):
        if not reads_frame(model, window, index, output):
            raise ModelFileError(f"{path}: its metadata says {frames} input frames, but its "
                                 "network " + frames_read(model, device, f"does not read frame "
                                                                         f"{index + 1} of {frames}"))


def probe_window(frames: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(20241205)
    return torch.rand(1, frames, 3, PROBE_SIDE, PROBE_SIDE, generator=generator).to(device)


def run_probe(model, window: torch.Tensor) -> torch.Tensor:
    # Unoptimised: the profiling executor would otherwise spend its first runs specialising the
    # graph to the probe's shapes, which no caller uses.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return model(window)


def reads_frame(model, window: torch.Tensor, index: int, output: torch.Tensor) -> bool:
    changed = window.clone()
    changed[:, index] = 1 - changed[:, index]
    return not torch.equal(run_probe(model, changed), output)


def frames_read(model, device, otherwise: str) -> str:
    """"reads N": the largest odd N up to 15 that the network takes, returning one frame that its
    window's last frame changes; `otherwise` where no N does. Only for the error message."""
    for count in range(15, 0, -2):
        window = probe_window(count, device)
        try:
            output = run_probe(model, window)
        except Exception:  # not this count
            continue
        if output.dim() == 4 and output.shape[0] == 1 and reads_frame(model, window, count - 1, output):
            return f"reads {count}"
    return otherwise


def config_of(metadata: dict) -> NetworkConfig:
    return NetworkConfig.from_dict(metadata["config"])
