"""Warm start: the weights a training run begins from (`vs-iedvr-train train --init PATH`).

PATH may be a vs-iedvr model file (the shipped ones also by name: default.pt, default-x2.pt), a
vs-iedvr training checkpoint, a BasicSR checkpoint (weights under "params_ema" or "params") or a
bare state dict.
Tensors whose names and shapes match the network are loaded; the others keep their fresh
initialisation and are listed (say the upsampler of an x4 model when training x2). Weights that
would leave most of the network fresh (fewer than MIN_LOADED_SHARE of its parameters) are refused:
they are another architecture's, and a run from them would be a run from scratch under another
name. The optimiser always starts fresh.
"""

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vs_iedvr import model_file, weights_file

# The model file wraps the network in PaddedNetwork, whose parameters are named "network.*".
MODEL_FILE_PREFIX = "network."
# The share of the network's parameters (by count) that must load. The scale's upsampler, the
# part that differs between an x4 and an x2 network, is a few percent of it.
MIN_LOADED_SHARE = 0.5


@dataclass
class InitialWeights:
    state: dict[str, torch.Tensor]
    kind: str  # "model file", "vs-iedvr checkpoint", "BasicSR checkpoint", "state dict"
    steps: int = 0  # training steps already behind these weights, where the file records them
    hours: float | None = None  # hours of training behind them; None where the file does not say


@dataclass
class WarmStart:
    loaded: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)  # same name, other shape: kept fresh
    missing: list[str] = field(default_factory=list)  # in the network, not in the file
    unused: list[str] = field(default_factory=list)  # in the file, not in the network


def steps_in_model_file(metadata: dict) -> int:
    training = metadata.get("weights", {}).get("training", {})
    return int(training.get("total_steps") or training.get("step") or 0)


def read_initial_weights(path) -> InitialWeights:
    path = model_file.shipped_or_path(str(path))
    if not path.is_file():
        raise ValueError(f"--init: {path} does not exist or is not a file")
    if zipfile.is_zipfile(path) and _is_model_file(path):
        metadata = model_file.read_metadata(path)
        with model_file.without_torchscript_deprecation():
            module = torch.jit.load(str(path), map_location="cpu")
        state = {name.removeprefix(MODEL_FILE_PREFIX): tensor.float()
                 for name, tensor in module.state_dict().items()}
        training = metadata.get("weights", {}).get("training", {})
        return InitialWeights(state, "model file", steps_in_model_file(metadata),
                              weights_file.recorded_hours(training))
    try:
        data = weights_file.load_checkpoint(io.BytesIO(path.read_bytes()), path, "a checkpoint")
    except model_file.ModelFileError as error:
        raise ValueError(f"--init: {error} (nor a vs-iedvr model file)") from None
    if isinstance(data, dict) and "model" in data and "config" in data:
        steps = int(data.get("total_steps") or data.get("step") or 0)
        return InitialWeights(data["model"], "vs-iedvr checkpoint", steps,
                              weights_file.recorded_hours(data))
    for key in ("params_ema", "params"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            return InitialWeights(data[key], "BasicSR checkpoint")
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return InitialWeights(data, "state dict")
    raise ValueError(f"--init: {path} holds no weights (expected a model file, a checkpoint with "
                     "'model', 'params_ema' or 'params', or a dict of tensors)")


def _is_model_file(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith(f"/extra/{model_file.METADATA_ENTRY}") for n in archive.namelist())


def warm_start(network: torch.nn.Module, initial: InitialWeights) -> WarmStart:
    """Copies the matching tensors of `initial` into `network`; raises ValueError if they hold
    fewer than MIN_LOADED_SHARE of the network's parameters."""
    own = network.state_dict()
    report = WarmStart()
    matching = {}
    for name, tensor in initial.state.items():
        if name not in own:
            report.unused.append(name)
        elif own[name].shape != tensor.shape:
            report.reshaped.append(name)
        else:
            matching[name] = tensor.to(own[name].dtype)
            report.loaded.append(name)
    report.missing = [n for n in own if n not in initial.state]
    total = sum(tensor.numel() for tensor in own.values())
    loaded = sum(tensor.numel() for tensor in matching.values())
    if loaded < MIN_LOADED_SHARE * total:
        raise ValueError(f"--init: the {initial.kind}'s weights fit {loaded / total:.0%} of the "
                         f"network's parameters ({len(matching)} of its {len(own)} tensors by name "
                         f"and shape; {len(initial.state)} tensors in the file): it is another "
                         "architecture's; give --arch, --scale and --network as it was trained")
    network.load_state_dict(matching, strict=False)
    return report


def describe(report: WarmStart, path) -> str:
    lines = [f"warm start from {path}: {len(report.loaded)} tensors loaded"]
    for title, names in (("initialised fresh (other shape)", report.reshaped),
                         ("initialised fresh (not in the file)", report.missing),
                         ("in the file, not in the network", report.unused)):
        if names:
            lines.append(f"  {title}: {', '.join(names)}")
    return "\n".join(lines)
