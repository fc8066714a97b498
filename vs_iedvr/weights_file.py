"""Weights read from files into the eager network: checkpoints (ours, BasicSR's, the OpenMMLab
EDVR files, bare state dicts), loaded safely (no pickle can run code) and strictly (every tensor
must fit), with the provenance a model file records; and the weights of a model file, to write it
again in another form.

    state, provenance = read_weights("best.pt")
    provenance = load_weights(network, "best.pt")
    network, metadata = network_from_model_file("default.pt")
"""

import hashlib
import io
import math
import warnings
from pathlib import Path

import torch

from . import edvr_checkpoint
from .arguments import first_line
from .model_file import ModelFileError, config_of, load_model
from .network import IEDVR


def load_checkpoint(source, path, what: str, map_location="cpu"):
    """torch.load with weights_only=True: tensors, containers and numbers only, so that a crafted
    pickle cannot run code on load. Raises ModelFileError naming `path` and `what` it should be."""
    try:
        with warnings.catch_warnings():  # said in the error below, or nothing the user can act on
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
            # A pickle not written by torch.save (pickle.dump's protocol 4 or 5) makes torch warn
            # that it "might not support" it, and advise weights_only=False: it is refused below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(source, map_location=map_location, weights_only=True)
    except RecursionError:
        raise ModelFileError(f"{path} is not {what} that can be loaded safely: it is nested "
                             "deeper than any checkpoint") from None
    except Exception as error:  # torch raises several types for files that are not checkpoints
        text = str(error)
        if "TorchScript archive" in text:
            reason = "it is a TorchScript archive (a model file?), not a checkpoint"
        elif "WeightsUnpickler error:" in text:
            # The unpickler's refusal (a global, an opcode) among torch's explanations of
            # weights_only, on the same line or the next non-empty one.
            after = text.split("WeightsUnpickler error:", 1)[1]
            refusal = next((line.strip() for line in after.splitlines() if line.strip()), "")
            reason = (f"it holds more than tensors, containers and numbers "
                      f"({refusal.split('. Please use')[0].rstrip('.')})" if refusal else
                      "it holds more than tensors, containers and numbers")
        else:
            reason = (f"not a PyTorch checkpoint? (torch.load: {type(error).__name__}: "
                      f"{first_line(error)})")
        raise ModelFileError(f"{path} is not {what} that can be loaded safely: {reason}") from None


def recorded_hours(record: dict) -> float | None:
    """The hours of training behind weights, as a checkpoint or a model file's weights.training
    records them; None where it does not (files written before they did, weights from elsewhere)."""
    hours = record.get("total_hours")
    return None if hours is None else float(hours)


def finite_or_none(score, what: str = "a validation score") -> float | None:
    """A validation score as a model file records it: None for one never taken (-inf, None);
    anything but a number (a crafted checkpoint's) is refused, naming `what`."""
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ModelFileError(f"{what} is {repr(score)[:80]}, not a number")
    return float(score) if math.isfinite(score) else None


def load_weights(network: IEDVR, path) -> dict:
    """Loads a checkpoint into `network` strictly (see read_weights). Returns the provenance to
    record in the model file."""
    state, provenance = read_weights(path)
    load_state_strictly(network, state, path)
    return provenance


def read_weights(path) -> tuple[dict, dict]:
    """The state dict of a checkpoint: a BasicSR checkpoint (under "params_ema" or "params"), a
    vs-iedvr training checkpoint (under "model") or a bare state dict; and its provenance."""
    if not Path(path).is_file():
        raise ModelFileError(f"checkpoint {path} does not exist or is not a file")
    data = Path(path).read_bytes()
    state = state_file = load_checkpoint(io.BytesIO(data), path, "a checkpoint")
    source_key = next((k for k in ("params_ema", "params", "model") if isinstance(state, dict) and k in state), None)
    if source_key is not None:
        state = state[source_key]
    elif edvr_checkpoint.is_mmagic_checkpoint(state):  # download.openmmlab.com's EDVR files
        state, source_key = edvr_checkpoint.basicsr_state_from_mmagic(state["state_dict"]), "state_dict"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path} holds no state dict (expected a dict of tensors, or one "
                             "under 'params_ema', 'params' or 'model')")
    provenance = {"source": str(Path(path).name), "sha256": hashlib.sha256(data).hexdigest(),
                  "state_dict_key": source_key}
    if source_key == "model" and "config" in state_file:  # a vs-iedvr training checkpoint
        provenance["training"] = {"step": state_file.get("step"),
                                  "total_steps": state_file.get("total_steps", state_file.get("step")),
                                  "total_hours": recorded_hours(state_file),
                                  # its own weights' validation score (None where they were not
                                  # validated at their step) and the run's best
                                  "val_psnr_y": finite_or_none(state_file.get("val_psnr_y"),
                                                               f"{path}: val_psnr_y"),
                                  "best_val_psnr_y": finite_or_none(state_file.get("best_psnr"),
                                                                    f"{path}: best_psnr"),
                                  "config": state_file["config"]}
    return state, provenance


def load_state_strictly(network: IEDVR, state: dict, path) -> None:
    """load_state_dict(strict=True), its refusal said in one line: how many tensors are missing,
    left over or of another shape, with the first of each."""
    own = network.state_dict()
    problems = {"missing": [n for n in own if n not in state],
                "not in the network": [n for n in state if n not in own],
                "of another shape": [n for n in own if n in state and own[n].shape != state[n].shape]}
    found = [f"{len(names)} {kind} (such as {names[0]})" for kind, names in problems.items() if names]
    if found:
        raise ModelFileError(f"{path}: its weights do not fit the network: tensors "
                             f"{', '.join(found)}; another architecture or scale?")
    network.load_state_dict(state, strict=True)


def network_from_model_file(path) -> tuple[IEDVR, dict]:
    """The eager network of a model file, its weights in float32, and the file's metadata: for
    exporting a model file again (ONNX, or other weights_dtype) without its checkpoint."""
    traced, metadata = load_model(path)
    try:
        network = IEDVR(config_of(metadata))
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: its metadata's network config is not one this vs-iedvr "
                             f"builds ({first_line(error)})") from None
    prefix = "network."
    # The traced PaddedNetwork holds the network under `network`, with the eager module's names.
    state = {name[len(prefix):]: tensor for name, tensor in traced.state_dict().items()
             if name.startswith(prefix)}
    load_state_strictly(network, state, path)
    return network.eval(), metadata
