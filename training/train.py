"""The training loop, top to bottom (after nanoGPT's train.py).

    vs-iedvr-train train --data clips/ stills:photos/ --out-dir runs/x4
    torchrun --nproc-per-node 2 --no-python vs-iedvr-train train ...   # several processes or nodes

The paper's recipe (Sections 2.1, 2.5, 3.1): Charbonnier loss, Adam (0.9, 0.99), cosine annealing
that restarts after every pass over the data, mixed precision (float16 with loss scaling on CUDA,
bfloat16 on CPUs that have it). For the deformable convolutions' stability: a lower learning rate
for the offset predictors, a linear warm-up, and the mean offset magnitude logged with a warning
past 50. Checkpoints allow an exact resume; the result is exported to the plugin's model file.

With a time budget (--time-budget-minutes, for a lent GPU's few minutes) the run stops on the
clock, start-up included, and its cosine spans the time left after the warm-up instead of a number
of steps, so that it ends at the bottom of the cycle however fast the machine is. Such a run's
schedule follows the clock, so its resume is not exact: a resumed run anneals again over its own
budget (a restart, as the step-counted cycles have too).

train() reads top to bottom: set-up, the loop (a step; then validation, the log and checkpoints,
each on its own schedule), the model file. The pieces it calls each do one thing: the processes,
the data, the model and optimiser (or their resume), the clock, the offset statistics, the log.
"""

import csv
import dataclasses
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vs_iedvr import model_file, weights_file
from vs_iedvr.edvr_blocks import DCNv2Pack
from vs_iedvr.network import build, channels_last_format
from vs_iedvr.precision import cpu_has_native_bfloat16

from .config import TrainConfig
from .data import WindowDataset, find_sources, split_validation
from .loss import charbonnier_loss
from .metrics import psnr, ssim
from .threads import ThreadTuner, machine_idle_cores
from .warm_start import describe, read_initial_weights, warm_start

OFFSET_WARNING = 50.0  # pixels: offsets this large mean the alignment is diverging

# log.csv's columns after "step" and how each is written; a row leaves empty what it lacks.
LOG_COLUMNS = {"loss": ".6f", "learning_rate": ".3e", "offset_magnitude": ".3f",
               "iterations_per_s": ".3f", "val_psnr_y": "", "val_ssim_y": "", "seconds": ".1f",
               "offset_magnitude_max": ".3f", "threads": "d"}


def learning_rate_at(step: int, config: TrainConfig, cycle: int,
                     progress: float | None = None) -> float:
    """Linear warm-up, then cosine annealing from learning_rate to min_learning_rate, restarting
    every `cycle` iterations; or, given `progress` (the share of a time budget's annealing time
    spent), one cosine over that time."""
    if step < config.warmup_iterations:
        return config.learning_rate * (step + 1) / config.warmup_iterations
    if progress is None:
        progress = (step - config.warmup_iterations) % cycle / cycle
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


def parameter_groups(network, config: TrainConfig) -> list[dict]:
    offsets = [p for n, p in network.named_parameters() if "conv_offset" in n]
    others = [p for n, p in network.named_parameters() if "conv_offset" not in n]
    return [{"params": others, "lr_factor": 1.0},
            {"params": offsets, "lr_factor": config.offset_lr_factor}]


def low_precision_dtype(device: torch.device) -> torch.dtype | None:
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bfloat16() else None


# -- processes: one, or several under torchrun ---------------------------------------------------

@dataclass
class Processes:
    distributed: bool
    rank: int
    world: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0


def start_processes(config: TrainConfig) -> Processes:
    """This process's place among torchrun's (RANK, WORLD_SIZE), its device, the process group."""
    distributed = "RANK" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if config.device == "auto":
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {config.device}: torch sees {torch.cuda.device_count()} CUDA "
                         "device(s)" + ("" if torch.cuda.is_available() else
                                        " (no GPU, or a torch built without CUDA)"))
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: the autotuned kernels pay off
    if config.threads:
        torch.set_num_threads(config.threads)
    return Processes(distributed, int(os.environ.get("RANK", 0)),
                     int(os.environ.get("WORLD_SIZE", 1)), device)


# -- data ------------------------------------------------------------------------------------------

def load_data(config: TrainConfig, frames: int, out_dir: Path,
              processes: Processes) -> tuple[WindowDataset, list | None]:
    """The training samples, and the validation samples (read and degraded once, so that every
    validation scores the same ones; rank 0 alone validates) or None when nothing is held out."""
    clips, stills = find_sources(config.data, frames, out_dir / "decoded")
    codec = {"codec_fraction": config.codec_fraction, "crf_range": (config.crf_min, config.crf_max),
             "image_cache_mb": config.image_cache_mb}
    (train_clips, train_stills), (val_clips, val_stills) = split_validation(
        clips, stills, config.validation_fraction, config.seed)
    dataset = WindowDataset(train_clips, train_stills, frames, config.scale, config.patch_size,
                            config.degradation, seed=config.seed, still_fraction=config.still_fraction,
                            layered_fraction=config.layered_fraction, **codec)
    if not (val_clips or val_stills) or not processes.master:
        return dataset, None
    held_out = WindowDataset(val_clips, val_stills, frames, config.scale, config.patch_size,
                             config.degradation, seed=config.seed + 1, augmentation=False,
                             still_fraction=config.still_fraction, **codec)
    return dataset, [held_out[i] for i in range(config.validation_samples)]


def batches(dataset, config: TrainConfig, processes: Processes, start: int):
    """The batches of steps start, start + 1, ...: sample i of step s is sample
    (s * world + rank) * batch + i of the dataset, so that every process and every resume draws
    the samples of an uninterrupted single run."""
    indexes = (((s * processes.world + processes.rank) * config.batch_size + i)
               for s in range(start, config.iterations) for i in range(config.batch_size))
    # A worker forked from a process that has run x264 (the codec's validation samples) hangs in
    # the encoder: codec runs start their workers from a fresh forkserver process instead.
    context = "forkserver" if config.num_workers and config.codec_fraction else None
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, sampler=indexes, num_workers=config.num_workers,
        persistent_workers=False, pin_memory=processes.device.type == "cuda",
        multiprocessing_context=context)
    return iter(loader)


# -- model, optimiser, precision, and their resume ---------------------------------------------

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


@torch.no_grad()
def validate(network, samples: list, device, autocast) -> dict[str, float]:
    """Mean Y-PSNR and Y-SSIM over fixed validation samples (low, high)."""
    network.eval()
    psnrs, ssims = [], []
    for low, high in samples:
        with autocast():
            out = network(low[None].to(device)).float().clamp(0, 1).cpu()
        psnrs.append(psnr(out[0], high, y_channel=True))
        ssims.append(ssim(out[0], high, y_channel=True))
    network.train()
    finite = [p for p in psnrs if math.isfinite(p)]
    return {"val_psnr_y": sum(finite) / max(1, len(finite)), "val_ssim_y": sum(ssims) / len(ssims)}


# -- the clock -------------------------------------------------------------------------------------

class Clock:
    """The wall clock's part in a run: the time budget's deadline and annealing, and the timed
    checkpoints. Under torchrun every process reads rank 0's clock, so that all anneal and stop
    at the same step (the loop's one synchronisation per step, and only with a time budget).

    A run interrupted before its deadline resumes `spent` seconds into the budget (what its
    checkpoint's steps took), with the annealing begun where it began: the same deadline and the
    same cosine. A run resumed after its deadline is a new cycle, over a budget of its own."""

    def __init__(self, config: TrainConfig, run_started: float, processes: Processes,
                 spent: float = 0.0, annealing_began: float | None = None):
        self.config, self.processes = config, processes
        self.started = run_started - spent  # the budget's second 0
        self.deadline = None
        if config.time_budget_minutes:  # rank 0's start: one deadline for every process
            self.started = self.rank_0s(self.started)
            self.deadline = self.started + 60 * config.time_budget_minutes
        self.annealing_started = None if annealing_began is None else self.started + annealing_began
        self.next_checkpoint = None
        if config.checkpoint_every_minutes:
            self.next_checkpoint = self.now() + 60 * config.checkpoint_every_minutes

    def now(self) -> float:
        return self.rank_0s(time.time()) if self.deadline is not None else time.time()

    def rank_0s(self, value: float) -> float:
        """Rank 0's value under torchrun (every process must call this at the same point)."""
        if not self.processes.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.processes.device)
        dist.broadcast(tensor, 0)
        return tensor.item()

    def annealing_progress(self, step: int, now: float) -> float | None:
        """The share of the budget's annealing time spent; None without a budget (the cosine
        then follows the steps)."""
        if self.deadline is None or step < self.config.warmup_iterations:
            return None
        self.annealing_started = self.annealing_started or now
        return (now - self.annealing_started) / max(self.deadline - self.annealing_started, 1e-9)

    def place(self, now: float) -> tuple[float, float | None]:
        """(seconds of the budget spent, when the annealing began): where a checkpoint written
        now leaves the clock of the run that resumes it; at the deadline, a fresh clock."""
        if self.out_of_time(now):
            return 0.0, None
        began = None if self.annealing_started is None else self.annealing_started - self.started
        return now - self.started, began

    def out_of_time(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def checkpoint_due(self, now: float) -> bool:
        """Whether a timed validation and checkpoint is due (and then the next one is set)."""
        if self.next_checkpoint is None or now < self.next_checkpoint:
            return False
        self.next_checkpoint = now + 60 * self.config.checkpoint_every_minutes
        return True

    def seconds_left(self, step: int, rate: float, now: float) -> float:
        left = (self.config.iterations - step) / max(rate, 1e-9)
        return left if self.deadline is None else min(left, max(0.0, self.deadline - now))


# -- what the log shows ----------------------------------------------------------------------------

class OffsetMonitor:
    """Mean |offset| of every deformable convolution over the training steps since the last read,
    gathered by forward hooks on their offset predictors: the model itself keeps no trainer
    state. The sums stay on the device, so a step costs no synchronisation; read() pays one."""

    def __init__(self, network: torch.nn.Module):
        self.sums: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.handles = [module.conv_offset.register_forward_hook(self._hook(name))
                        for name, module in network.named_modules() if isinstance(module, DCNv2Pack)]

    def _hook(self, name: str):
        def record(module, inputs, output):
            if not module.training:  # validation's offsets are not the training's
                return
            # DCNv2Pack reads the predictor's output as thirds (dy, dx, mask): offsets first.
            offsets = output.detach()[:, : output.shape[1] // 3 * 2]
            magnitude = offsets.abs().mean().float()
            self.sums[name] = self.sums[name] + magnitude if name in self.sums else magnitude
            self.calls[name] = self.calls.get(name, 0) + 1
        return record

    def read(self) -> tuple[float, float]:
        """(mean over the convolutions, the largest convolution's mean) since the last read."""
        if not self.sums:
            return 0.0, 0.0
        means = torch.stack([total / self.calls[name] for name, total in self.sums.items()]).tolist()
        self.sums, self.calls = {}, {}
        return sum(means) / len(means), max(means)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class RunLog:
    """log.csv (appended to by a resumed run) and, when tensorboard is installed, TensorBoard
    curves in OUT_DIR/tensorboard."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / "log.csv"
        header = ["step", *LOG_COLUMNS]
        old_header = None
        if self.path.exists():
            with open(self.path, newline="") as f:
                old_header = next(csv.reader(f), None)
        if old_header is not None and old_header != header:  # written before columns were added
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            with open(self.path, "w", newline="") as f:
                writer = csv.DictWriter(f, header, restval="", extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(header)
            self.file.flush()
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            pass

    def log(self, step: int, values: dict[str, float]) -> None:
        """One row of log.csv for `step` (columns missing from `values` left empty), flushed at
        once so that a crash loses nothing; the same values as TensorBoard scalars."""
        unknown = set(values) - set(LOG_COLUMNS)
        if unknown:
            raise ValueError(f"not columns of log.csv: {sorted(unknown)}")
        self.csv.writerow([step] + [format(values[column], spec) if column in values else ""
                                    for column, spec in LOG_COLUMNS.items()])
        self.file.flush()
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)
            self.tensorboard.flush()

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def progress_line(step: int, config: TrainConfig, values: dict, seconds_left: float) -> str:
    """The log row as a line, with the time left and, on runs with more than ten minutes to go,
    the clock time they should end at."""
    line = (f"step {step}/{config.iterations} loss {values['loss']:.5f} "
            f"lr {values['learning_rate']:.2e} offsets {values['offset_magnitude']:.2f} "
            f"{values['iterations_per_s']:.2f} it/s"
            + (f" on {values['threads']} thread{'s' * (values['threads'] != 1)}"
               if "threads" in values else "")
            + f", {duration(seconds_left)} left")
    if seconds_left > 600:
        line += time.strftime(" (ends about %a %H:%M)", time.localtime(time.time() + seconds_left))
    if "val_psnr_y" in values:
        line += f", val Y-PSNR {values['val_psnr_y']:.2f} SSIM {values['val_ssim_y']:.4f}"
    return line


# -- the result ------------------------------------------------------------------------------------

def export_model_file(config: TrainConfig, out_dir: Path, best_psnr: float) -> Path:
    """The plugin's model file from best.pt (last.pt when nothing was validated), with the
    training's provenance in its metadata."""
    path = out_dir / "model.pt"
    weights = out_dir / "best.pt" if (out_dir / "best.pt").exists() else out_dir / "last.pt"
    final = build(config.arch, scale=config.scale, **config.network)
    provenance = weights_file.load_weights(final, weights)
    saved = provenance["training"]  # the step, total_steps and total_hours of its weights
    provenance["training"] = {"data": config.data, "degradation": config.degradation,
                              "iterations": config.iterations, "arch": config.arch,
                              "init": saved["config"].get("init") or None, "step": saved["step"],
                              "total_steps": saved["total_steps"],
                              "total_hours": saved["total_hours"],
                              "val_psnr_y": saved["val_psnr_y"],
                              "best_val_psnr_y": weights_file.finite_or_none(best_psnr)}
    if config.layered_fraction:
        provenance["training"]["layered_fraction"] = config.layered_fraction
    if config.codec_fraction:  # weights for compressed sources say which
        provenance["training"] |= {"codec_fraction": config.codec_fraction,
                                   "crf_range": [config.crf_min, config.crf_max]}
    model_file.export_model(final, path, config.arch, provenance)
    return path


def train(config: TrainConfig) -> Path | None:
    run_started = time.time()
    out_dir = Path(config.out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    refuse_to_overwrite(config, last_path)  # in every process, before any starts
    processes = start_processes(config)
    master, device = processes.master, processes.device
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        if config.weights_dir:
            Path(config.weights_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)  # the same initial weights in every process
    network = build(config.arch, scale=config.scale, **config.network)
    dataset, validation = load_data(config, network.config.num_frame, out_dir, processes)
    cycle = config.restart_every or max(1, dataset.pass_length() // (config.batch_size * processes.world))
    trainee = prepare_trainee(network, config, processes, last_path)
    network, optimizer, scaler = trainee.network, trainee.optimizer, trainee.scaler
    model = DistributedDataParallel(network) if processes.distributed else network
    amp_dtype = low_precision_dtype(device) if config.amp else None
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    log = RunLog(out_dir) if master else None
    offsets = OffsetMonitor(network) if master else None
    clock = Clock(config, run_started, processes, trainee.budget_spent, trainee.annealing_began)

    if master and validation is not None and trainee.step == 0 and config.init:
        # What the run starts from, to compare its validation scores with.
        scores = validate(network, validation, device, autocast)
        log.log(0, scores | {"seconds": 0.0})
        print(f"step 0 (the --init weights) val Y-PSNR {scores['val_psnr_y']:.2f} "
              f"SSIM {scores['val_ssim_y']:.4f}", file=sys.stderr, flush=True)

    tuner = (ThreadTuner(torch.get_num_threads(), idle_cores=machine_idle_cores())
             if config.adapt_threads and device.type == "cpu" else None)

    # -- the loop ----------------------------------------------------------------------------------
    model.train()
    first_step, started, seconds_before = trainee.step, time.time(), trainee.seconds
    window_start, window_steps, window_loss = time.time(), 0, torch.zeros((), device=device)
    data = batches(dataset, config, processes, trainee.step)
    now = clock.now()
    while trainee.step < config.iterations:
        lr = learning_rate_at(trainee.step, config, cycle, clock.annealing_progress(trainee.step, now))
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_factor"]
        low, high = next(data)
        low, high = low.to(device, non_blocking=True), high.to(device, non_blocking=True)
        with autocast():
            out = model(low)
        loss = charbonnier_loss(out.float(), high)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        trainee.step += 1
        step = trainee.step
        window_loss += loss.detach()  # summed on the device: .item() only when a row is written
        window_steps += 1
        if tuner is not None and (threads := tuner.step_done(time.time())) is not None:
            torch.set_num_threads(threads)

        now = clock.now()
        trainee.seconds = seconds_before + now - started  # rank 0 saves; `now` is its clock
        trainee.budget_spent, trainee.annealing_began = clock.place(now)
        out_of_time = clock.out_of_time(now)
        # The end of the run and the timed checkpoints validate, log and checkpoint.
        milestone = step == config.iterations or out_of_time or clock.checkpoint_due(now)

        scores = {}
        if master and validation is not None and (step % config.validate_every == 0 or milestone):
            scores = validate(network, validation, device, autocast)
            if scores["val_psnr_y"] > trainee.best_psnr:
                trainee.best_psnr = scores["val_psnr_y"]
                save(best_path, trainee, config, scores["val_psnr_y"])

        if master and (step % config.log_every == 0 or milestone or scores):
            rate = window_steps / max(now - window_start, 1e-9)
            offset_mean, offset_max = offsets.read()
            if offset_mean > OFFSET_WARNING:
                warnings.warn(f"step {step}: mean DCN offset magnitude {offset_mean:.1f} > "
                              f"{OFFSET_WARNING:.0f}: training may be diverging (lower "
                              "learning_rate or offset_lr_factor, or raise warmup_iterations)")
            values = {"loss": window_loss.item() / window_steps, "learning_rate": lr,
                      "offset_magnitude": offset_mean, "offset_magnitude_max": offset_max,
                      "iterations_per_s": rate, "seconds": time.time() - started,
                      "threads": torch.get_num_threads()} | scores
            log.log(step, values)
            print(progress_line(step, config, values, clock.seconds_left(step, rate, now)),
                  file=sys.stderr, flush=True)
            window_start, window_steps, window_loss = time.time(), 0, torch.zeros((), device=device)

        if master and (step % config.checkpoint_every == 0 or milestone):
            save(last_path, trainee, config, scores.get("val_psnr_y"))
        if out_of_time:
            break

    # -- the result: the plugin's model file -------------------------------------------------------
    if master:
        seconds = time.time() - started
        steps = trainee.step - first_step
        print(f"trained {steps} steps in {seconds:.1f} s: {steps / max(seconds, 1e-9):.3f} steps/s",
              flush=True)
        log.close()
        offsets.remove()
        if config.export:
            export_model_file(config, out_dir, trainee.best_psnr)
    if processes.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return out_dir / "model.pt" if config.export else None
