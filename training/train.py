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
each on its own schedule), the model file. The pieces it calls each do one thing, each in a file
of its own: the processes (processes.py), the data (data.py), the model and optimiser and their
checkpoints (checkpoint.py), the clock (clock.py), the offset statistics and the log (run_log.py).
"""

import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vs_iedvr import model_file, weights_file
from vs_iedvr.network import build

from .checkpoint import prepare_trainee, refuse_to_overwrite, save
from .clock import Clock
from .config import TrainConfig
from .data import WindowDataset, find_sources, split_validation
from .loss import charbonnier_loss
from .metrics import psnr, ssim
from .processes import Processes, low_precision_dtype, start_processes
from .run_log import OffsetMonitor, RunLog, progress_line
from .threads import ThreadTuner, machine_idle_cores

OFFSET_WARNING = 50.0  # pixels: offsets this large mean the alignment is diverging


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


# -- validation ------------------------------------------------------------------------------------

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
