"""What a run carries between its steps and across a resume: the network, its optimiser and loss
scaler, its place (steps, seconds, the time budget's clock) and where its weights came from; the
checkpoints that hold them (last.pt, best.pt and their float16 copies)."""

import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vs_iedvr import weights_file
from vs_iedvr.network import channels_last_format

from .config import TrainConfig
from .processes import Processes, low_precision_dtype
from .warm_start import describe, read_initial_weights, warm_start


def parameter_groups(network, config: TrainConfig) -> list[dict]:
    """Adam's parameter groups: the offset predictors at offset_lr_factor of the rate (the
    deformable convolutions' stability), the rest at the rate."""
    offsets = [p for n, p in network.named_parameters() if "conv_offset" in n]
    others = [p for n, p in network.named_parameters() if "conv_offset" not in n]
    return [{"params": others, "lr_factor": 1.0},
            {"params": offsets, "lr_factor": config.offset_lr_factor}]


@dataclass
class Trainee:
    """What a checkpoint holds: the network, its optimiser and loss scaler, and the run's place."""
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0
    best_psnr: float = -math.inf
    init_steps: int = 0  # the steps behind the --init weights, carried into total_steps
    # The --init of the run's first command: a resume takes its weights from last.pt, whatever
    # --init its own command names, so the weights' provenance keeps the first.
    init: str = ""
    # The hours behind the --init weights (None where its file does not say) and the seconds this
    # run has trained, resumes included: carried into total_hours as the steps are.
    init_hours: float | None = 0.0
    seconds: float = 0.0
    # The time budget's clock: its seconds spent, and when (in those seconds) the annealing
    # began, so that a resumed run keeps its deadline and goes on down the same cosine.
    budget_spent: float = 0.0
    annealing_began: float | None = None


def weights_a_run_writes(config: TrainConfig) -> list[Path]:
    """The weights a run writes besides last.pt, which it resumes from (or writes first)."""
    out_dir = Path(config.out_dir)
    files = [out_dir / "best.pt"] + ([out_dir / "model.pt"] if config.export else [])
    if config.weights_dir:
        files += [Path(config.weights_dir) / name for name in ("last-fp16.pt", "best-fp16.pt")]
    return files


def refuse_to_overwrite(config: TrainConfig, last_path: Path) -> None:
    """A new run (no last.pt to resume) never overwrites weights that it did not write: best.pt,
    model.pt or the float16 copies left by another run, or put there by hand, stop it before it
    starts. A resumed run wrote them itself (they belong to its last.pt)."""
    if last_path.exists():
        return
    found = [str(path) for path in weights_a_run_writes(config) if path.exists()]
    if found:
        raise ValueError(f"--out-dir {config.out_dir} holds no last.pt to resume, but a new run "
                         f"would overwrite {', '.join(found)}, which it did not write: move "
                         f"{'them' if len(found) > 1 else 'it'} away or choose another --out-dir")


def prepare_trainee(network, config: TrainConfig, processes: Processes, last_path: Path) -> Trainee:
    """The network on its device with its optimiser: resumed from last.pt when there is one,
    else warm-started from --init when asked."""
    init_steps, init_hours = 0, 0.0
    if config.init and not last_path.exists():  # a resume takes its weights from last.pt
        initial = read_initial_weights(config.init)
        report = warm_start(network, initial)
        init_steps, init_hours = initial.steps, initial.hours
        if processes.master:
            print(describe(report, config.init), flush=True)
    network = network.to(processes.device)
    if config.channels_last:  # by hand: Module.to() refuses the 3D convolutions' 5D weights
        for parameter in network.parameters():
            parameter.data = parameter.data.contiguous(memory_format=channels_last_format(parameter))
    optimizer = torch.optim.Adam(parameter_groups(network, config), lr=config.learning_rate,
                                 betas=(0.9, 0.99), weight_decay=config.weight_decay)
    amp_dtype = low_precision_dtype(processes.device) if config.amp else None
    scaler = torch.amp.GradScaler(processes.device.type, enabled=amp_dtype == torch.float16)
    trainee = Trainee(network, optimizer, scaler, init_steps=init_steps, init_hours=init_hours,
                      init=config.init)
    if last_path.exists():  # resume exactly where the last checkpoint was written
        # weights_only: tensors, containers and numbers, all that save_checkpoint writes; a
        # crafted last.pt cannot run code.
        state = weights_file.load_checkpoint(last_path, last_path, "a vs-iedvr checkpoint",
                                           map_location=processes.device)
        needed = ("model", "optimizer", "scaler", "step", "best_psnr")
        missing = [key for key in needed if not isinstance(state, dict) or key not in state]
        if missing:
            raise ValueError(f"{last_path} is not a vs-iedvr checkpoint that resumes a run (it "
                             f"has no {', '.join(missing)}); move it away to start afresh")
        weights_file.load_state_strictly(network, state["model"], last_path)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        trainee.step, trainee.best_psnr = state["step"], state["best_psnr"]
        trainee.init_steps = state.get("init_steps", 0)
        trainee.init = str(state.get("config", {}).get("init") or "")
        if processes.master and config.init and config.init != trainee.init:
            print(f"--init {config.init} left unused: the run resumes {last_path}, which began "
                  f"from {trainee.init or 'fresh weights'}", file=sys.stderr, flush=True)
        # A checkpoint from before the seconds were kept: the hours behind it are not known.
        trainee.init_hours = state.get("init_hours") if "seconds" in state else None
        trainee.seconds = state.get("seconds", 0.0)
        clock = state.get("clock", {})
        trainee.budget_spent = clock.get("budget_spent", 0.0)
        trainee.annealing_began = clock.get("annealing_began")
    return trainee


def save_checkpoint(path: Path, trainee: Trainee, config: TrainConfig,
                    val_psnr_y: float | None = None, weights_only: bool = False) -> None:
    """weights_only: the weights alone, in float16, which --init and `vs-iedvr export --weights`
    read but which cannot resume a run: 7 MB for iedvr-m where Adam's moments make last.pt 42 MB,
    small enough to carry off a lent machine (the shipped model file holds float16 weights anyway).
    total_steps and total_hours follow the weights from run to run (and from machine to machine
    through the shipped model file). val_psnr_y: the weights' validation score at this step, None
    where they were not validated at it (a model file then says what its own weights scored, not
    only the run's best)."""
    state = {"model": trainee.network.state_dict(), "step": trainee.step,
             "best_psnr": trainee.best_psnr, "val_psnr_y": val_psnr_y,
             "init_steps": trainee.init_steps,
             "total_steps": trainee.init_steps + trainee.step,
             "init_hours": trainee.init_hours, "seconds": trainee.seconds,
             "total_hours": total_hours(trainee),
             "clock": {"budget_spent": trainee.budget_spent,
                       "annealing_began": trainee.annealing_began},
             "config": dataclasses.asdict(config) | {"init": trainee.init}}
    if weights_only:
        state["model"] = {name: tensor.detach().to("cpu", torch.float16).contiguous()
                          if tensor.is_floating_point() else tensor.cpu()
                          for name, tensor in state["model"].items()}
    else:
        state |= {"optimizer": trainee.optimizer.state_dict(), "scaler": trainee.scaler.state_dict()}
    temporary = path.with_name(path.name + ".partial")
    torch.save(state, temporary)
    os.replace(temporary, path)


def total_hours(trainee: Trainee) -> float | None:
    """The hours of training behind the weights: the --init weights' and this run's loop (the
    wall clock of its steps, validation and checkpoints; not its start-up)."""
    return None if trainee.init_hours is None else trainee.init_hours + trainee.seconds / 3600


def save(path: Path, trainee: Trainee, config: TrainConfig, val_psnr_y: float | None) -> None:
    """last.pt or best.pt, and its float16 copy in --weights-dir when asked."""
    save_checkpoint(path, trainee, config, val_psnr_y)
    if config.weights_dir:
        save_checkpoint(Path(config.weights_dir) / f"{path.stem}-fp16.pt", trainee, config,
                        val_psnr_y, weights_only=True)
