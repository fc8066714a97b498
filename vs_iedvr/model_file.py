"""The model file: one TorchScript archive that holds the traced network (with the padding that
lets it take any frame size) and a JSON metadata entry. It is everything the plugin needs.

    export_model(net, "model.pt", weights={"source": "..."})
    model, metadata = load_model("model.pt")
    upscaled = model(frames)       # [B, T, 3, H, W] float RGB in [0, 1], any H and W
"""

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .network import SIZE_MULTIPLE, IEDVR, NetworkConfig, count_parameters

FORMAT = "vs-iedvr-model"
FORMAT_VERSION = 1
METADATA_ENTRY = "vs_iedvr.json"
# The size the network is traced at; nothing about it is baked in (the tests check other sizes).
TRACE_SIZE = (32, 48)


class ModelFileError(ValueError):
    """A model file that is missing, unreadable or not a vs-iedvr model."""


SHIPPED_DIR = Path(__file__).parent / "models"


def shipped_or_path(text: str) -> Path:
    """A path, or the bare name of a shipped model file (default.pt, default-x2.pt) that no file
    of that name in the working directory shadows: what `--from-model` and `--init` accept."""
    path = Path(text)
    shipped = SHIPPED_DIR / path.name
    if not path.exists() and path.name == text and shipped.is_file():
        return shipped
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

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        padded = pad_frames(frames, SIZE_MULTIPLE)
        return crop_output(self.network(padded), frames, self.scale)

    def features(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        padded = pad_frames(frames.unsqueeze(0), SIZE_MULTIPLE).squeeze(0)
        return self.network.frame_features(padded)

    def upscale(self, l1: torch.Tensor, l2: torch.Tensor, l3: torch.Tensor, t1: torch.Tensor,
                t2: torch.Tensor, t3: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        padded = pad_frames(centre.unsqueeze(1), SIZE_MULTIPLE).squeeze(1)
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
    metadata = metadata_for(network, arch, weights or {"source": "untrained (random initialisation)"})
    metadata["weights_dtype"] = weights_dtype
    metadata["weights_crc32"] = weights_checksum(traced)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    with without_torchscript_deprecation():
        torch.jit.save(traced, str(temporary), _extra_files={METADATA_ENTRY: json.dumps(metadata)})
    os.replace(temporary, path)  # never leave a half-written model under the real name
    return metadata


def read_metadata(path) -> dict:
    """The metadata of a model file, checked; raises ModelFileError for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_ENTRY}")]
            raw = archive.read(entries[0]) if entries else None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ModelFileError(f"{path} is not a vs-iedvr model file (not a readable TorchScript "
                             f"archive: {error}); export one with `python -m vs_iedvr export`") from None
    if raw is None:
        raise ModelFileError(f"{path} is a TorchScript archive without vs-iedvr metadata; export "
                             "the model with `python -m vs_iedvr export`")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: its metadata is not valid JSON ({error})") from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a vs-iedvr model file (format {metadata.get('format')!r})")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {metadata['format_version']}; this "
                             f"vs-iedvr ({__version__}) reads up to {FORMAT_VERSION}: upgrade it")
    return metadata


def load_model(path, device="cpu") -> tuple[torch.jit.ScriptModule, dict]:
    metadata = read_metadata(path)
    try:
        with without_torchscript_deprecation():
            model = torch.jit.load(str(path), map_location=device)
    except RuntimeError as error:
        raise ModelFileError(f"{path} could not be loaded ({str(error).splitlines()[0]}); the "
                             "file may be truncated: export it again") from None
    recorded = metadata.get("weights_crc32")  # absent in files exported before it existed
    if recorded is not None and recorded != weights_checksum(model):
        raise ModelFileError(f"{path} is damaged: its weights' checksum is {weights_checksum(model)}, "
                             f"its metadata says {recorded}; download or export the model again")
    return model.float().eval(), metadata


def load_weights(network: IEDVR, path) -> dict:
    """Loads a checkpoint into `network` strictly: a BasicSR checkpoint (under "params_ema" or
    "params"), a vs-iedvr training checkpoint (under "model") or a bare state dict. Returns the
    provenance to record in the model file."""
    data = Path(path).read_bytes()
    state = state_file = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    source_key = next((k for k in ("params_ema", "params", "model") if isinstance(state, dict) and k in state), None)
    if source_key is not None:
        state = state[source_key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path} holds no state dict (expected a dict of tensors, or one "
                             "under 'params_ema', 'params' or 'model')")
    network.load_state_dict(state, strict=True)
    provenance = {"source": str(Path(path).name), "sha256": hashlib.sha256(data).hexdigest(),
                  "state_dict_key": source_key}
    if source_key == "model" and "config" in state_file:  # a vs-iedvr training checkpoint
        best = state_file.get("best_psnr")
        provenance["training"] = {"step": state_file.get("step"),
                                  "total_steps": state_file.get("total_steps", state_file.get("step")),
                                  "best_val_psnr_y": best if best is not None and math.isfinite(best) else None,
                                  "config": state_file["config"]}
    return provenance


def flops_per_frame(model: nn.Module, metadata: dict, height: int, width: int) -> int:
    """Floating-point operations (a multiply-add counts 2) for one output frame from input frames
    of height x width, counted by running the model once under torch's FLOP counter."""
    frames = torch.zeros(1, metadata["num_frames"], 3, height, width)
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(frames)
    return counter.get_total_flops()


def config_of(metadata: dict) -> NetworkConfig:
    return NetworkConfig.from_dict(metadata["config"])


def network_from_model_file(path) -> tuple[IEDVR, dict]:
    """The eager network of a model file, its weights in float32, and the file's metadata: for
    exporting a model file again (ONNX, or other weights_dtype) without its checkpoint."""
    traced, metadata = load_model(path)
    network = IEDVR(config_of(metadata))
    prefix = "network."
    # The traced PaddedNetwork holds the network under `network`, with the eager module's names.
    state = {name[len(prefix):]: tensor for name, tensor in traced.state_dict().items()
             if name.startswith(prefix)}
    network.load_state_dict(state, strict=True)
    return network.eval(), metadata
