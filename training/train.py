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
"""

import csv
import dataclasses
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vs_iedvr import model_file
from vs_iedvr.edvr_blocks import DCNv2Pack
from vs_iedvr.loss import charbonnier_loss
from vs_iedvr.network import build

from .data import WindowDataset, find_sources, split_validation
from .metrics import psnr, ssim
from .warm_start import describe, read_initial_weights, warm_start

OFFSET_WARNING = 50.0


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)  # clip folders, video files, stills:FOLDER
    out_dir: str = "runs/iedvr"
    init: str = ""  # warm start: a model file or checkpoint whose matching tensors are loaded
    arch: str = "iedvr-m"
    network: dict = field(default_factory=dict)  # overrides of the preset's NetworkConfig
    scale: int = 4
    degradation: str = "BI"  # BI (bicubic) or BD (Gaussian blur, every scale-th pixel)
    still_fraction: float = 0.0  # share of samples from stills:; 0 = each still counts as one window
    patch_size: int = 64  # low-resolution patch side
    batch_size: int = 8  # per process
    iterations: int = 100_000
    learning_rate: float = 5e-5  # the paper's initial rate (EDVR used 4e-4)
    min_learning_rate: float = 1e-7
    offset_lr_factor: float = 0.1  # learning rate multiplier of the DCN offset predictors
    warmup_iterations: int = 500
    restart_every: int = 0  # iterations per cosine cycle; 0 = one pass over the data (the paper)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    amp: bool = True  # float16 + loss scaling on CUDA, bfloat16 on CPUs that support it
    channels_last: bool = True
    validation_fraction: float = 0.1
    validation_samples: int = 16
    validate_every: int = 1000
    checkpoint_every: int = 500
    log_every: int = 20
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    time_budget_minutes: float = 0.0  # stop after this much wall clock, start-up included; 0 = none
    checkpoint_every_minutes: float = 0.0  # also validate and checkpoint this often; 0 = only by steps
    weights_dir: str = ""  # also write the weights alone, float16, as last-fp16.pt and best-fp16.pt
    export: bool = True  # write the plugin's model file, model.pt, at the end


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


def mean_offset_magnitude(network) -> float:
    values = [m.offset_magnitude for m in network.modules()
              if isinstance(m, DCNv2Pack) and m.offset_magnitude is not None]
    return torch.stack(values).mean().item() if values else 0.0


def low_precision_dtype(device: torch.device) -> torch.dtype | None:
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else None


def pick_device(choice: str, local_rank: int) -> torch.device:
    if choice == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(choice)


def save_checkpoint(path: Path, network, optimizer, scaler, step: int, best_psnr: float,
                    config: TrainConfig, init_steps: int, weights_only: bool = False) -> None:
    """init_steps: the steps behind the --init weights, so that total_steps follows the weights
    from run to run (and from machine to machine through the shipped model file).

    weights_only: the weights alone, in float16, which --init and `vs-iedvr export --weights` read
    but which cannot resume a run: 7 MB for iedvr-m where Adam's moments make last.pt 42 MB, small
    enough to carry off a lent machine (the shipped model file holds float16 weights anyway)."""
    state = {"model": network.state_dict(), "step": step, "best_psnr": best_psnr,
             "init_steps": init_steps, "total_steps": init_steps + step,
             "config": dataclasses.asdict(config)}
    if weights_only:
        state["model"] = {name: tensor.detach().to("cpu", torch.float16).contiguous()
                          if tensor.is_floating_point() else tensor.cpu()
                          for name, tensor in state["model"].items()}
    else:
        state |= {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}
    temporary = path.with_name(path.name + ".partial")
    torch.save(state, temporary)
    os.replace(temporary, path)


@torch.no_grad()
def validate(network, samples: list, device, autocast) -> tuple[float, float]:
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
    return sum(finite) / max(1, len(finite)), sum(ssims) / len(ssims)


def train(config: TrainConfig) -> Path | None:
    run_started = time.time()
    deadline = run_started + 60 * config.time_budget_minutes if config.time_budget_minutes else None
    # -- processes: one, or several under torchrun ------------------------------------------
    distributed = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(config.device, local_rank)
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: the autotuned kernels pay off
    if config.threads:
        torch.set_num_threads(config.threads)
    master = rank == 0
    out_dir = Path(config.out_dir)
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)  # the same initial weights in every process

    # -- data ------------------------------------------------------------------------------------
    network = build(config.arch, scale=config.scale, **config.network)
    frames = network.config.num_frame
    clips, stills = find_sources(config.data, frames, out_dir / "decoded")
    (train_clips, train_stills), (val_clips, val_stills) = split_validation(
        clips, stills, config.validation_fraction, config.seed)
    dataset = WindowDataset(train_clips, train_stills, frames, config.scale, config.patch_size,
                            config.degradation, seed=config.seed, still_fraction=config.still_fraction)
    # The same validation samples every time: read and degraded once.
    validation = None
    if val_clips or val_stills:
        held_out = WindowDataset(val_clips, val_stills, frames, config.scale, config.patch_size,
                                 config.degradation, seed=config.seed + 1, augmentation=False,
                                 still_fraction=config.still_fraction)
        validation = [held_out[i] for i in range(config.validation_samples)] if master else None
    cycle = config.restart_every or max(1, dataset.pass_length() // (config.batch_size * world))

    # -- model, optimiser, precision -------------------------------------------------------------
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    weights_dir = Path(config.weights_dir) if config.weights_dir else None
    if weights_dir is not None and master:
        weights_dir.mkdir(parents=True, exist_ok=True)
    init_steps = 0
    if config.init and not last_path.exists():  # a resume takes its weights from last.pt
        initial = read_initial_weights(config.init)
        report = warm_start(network, initial)
        init_steps = initial.steps
        if master:
            print(describe(report, config.init), flush=True)
    network = network.to(device)
    if config.channels_last:  # 2D convolutions only; Module.to() refuses the 3D ones' 5D weights
        for parameter in network.parameters():
            if parameter.dim() == 4:
                parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(parameter_groups(network, config), lr=config.learning_rate,
                                 betas=(0.9, 0.99), weight_decay=config.weight_decay)
    amp_dtype = low_precision_dtype(device) if config.amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    step, best_psnr = 0, -math.inf
    if last_path.exists():  # resume exactly where the last checkpoint was written
        state = torch.load(last_path, map_location=device, weights_only=False)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, best_psnr = state["step"], state["best_psnr"]
        init_steps = state.get("init_steps", 0)
    model = DistributedDataParallel(network) if distributed else network

    def save(path: Path, step: int) -> None:
        save_checkpoint(path, network, optimizer, scaler, step, best_psnr, config, init_steps)
        if weights_dir is not None:
            save_checkpoint(weights_dir / f"{path.stem}-fp16.pt", network, optimizer, scaler, step,
                            best_psnr, config, init_steps, weights_only=True)

    def shared_clock() -> float:
        """Rank 0's clock in every process, so that all stop and anneal together."""
        now = time.time()
        if distributed and deadline is not None:
            now_tensor = torch.tensor([now], dtype=torch.float64, device=device)
            dist.broadcast(now_tensor, 0)
            now = now_tensor.item()
        return now

    # Sample i of step s is sample (s * world + rank) * batch + i of the dataset: every process
    # and every resume draws the samples of an uninterrupted single run.
    def batches(start: int):
        indexes = (((s * world + rank) * config.batch_size + i)
                   for s in range(start, config.iterations) for i in range(config.batch_size))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, sampler=indexes,
            num_workers=config.num_workers, persistent_workers=False,
            pin_memory=device.type == "cuda")
        return iter(loader)

    log_file = tensorboard = None
    if master:
        try:  # TensorBoard curves when it is installed; log.csv always
            from torch.utils.tensorboard import SummaryWriter
            tensorboard = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            pass
        new_log = not (out_dir / "log.csv").exists()
        log_file = open(out_dir / "log.csv", "a", newline="")
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "learning_rate", "offset_magnitude", "iterations_per_s",
                          "val_psnr_y", "val_ssim_y", "seconds"])

    # -- the loop --------------------------------------------------------------------------------
    if master and validation is not None and step == 0 and config.init:
        # What the run starts from, to compare its validation scores with.
        val_psnr, val_ssim = validate(network, validation, device, autocast)
        print(f"step 0 (the --init weights) val Y-PSNR {val_psnr:.2f} SSIM {val_ssim:.4f}", flush=True)
        log.writerow([0, "", "", "", "", val_psnr, val_ssim, "0.0"])
    model.train()
    started, window_start, window_losses = time.time(), time.time(), []
    first_step, now = step, shared_clock()
    annealing_started = next_timed_checkpoint = None
    if config.checkpoint_every_minutes:
        next_timed_checkpoint = now + 60 * config.checkpoint_every_minutes
    data = batches(step)
    while step < config.iterations:
        progress = None
        if deadline is not None and step >= config.warmup_iterations:
            annealing_started = annealing_started or now
            progress = (now - annealing_started) / max(deadline - annealing_started, 1e-9)
        lr = learning_rate_at(step, config, cycle, progress)
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
        step += 1
        window_losses.append(loss.item())
        now = shared_clock()
        out_of_time = deadline is not None and now >= deadline
        last_step = step == config.iterations or out_of_time
        timed = next_timed_checkpoint is not None and now >= next_timed_checkpoint
        if timed:
            next_timed_checkpoint = now + 60 * config.checkpoint_every_minutes

        if master and (step % config.log_every == 0 or last_step or timed):
            offsets = mean_offset_magnitude(network)
            if offsets > OFFSET_WARNING:
                warnings.warn(f"step {step}: mean DCN offset magnitude {offsets:.1f} > "
                              f"{OFFSET_WARNING:.0f}: training may be diverging (lower "
                              "learning_rate or offset_lr_factor, or raise warmup_iterations)")
            rate = len(window_losses) / (time.time() - window_start)
            mean_loss = sum(window_losses) / len(window_losses)
            left = (config.iterations - step) / max(rate, 1e-9)
            if deadline is not None:
                left = min(left, max(0.0, deadline - now))
            val_psnr = val_ssim = ""
            if validation is not None and (step % config.validate_every == 0 or last_step or timed):
                val_psnr, val_ssim = validate(network, validation, device, autocast)
                if val_psnr > best_psnr:
                    best_psnr = val_psnr
                    save(best_path, step)
            print(f"step {step}/{config.iterations} loss {mean_loss:.5f} lr {lr:.2e} "
                  f"offsets {offsets:.2f} {rate:.2f} it/s, "
                  + (f"{left / 3600:.1f} h left" if left >= 3600 else f"{left / 60:.1f} min left")
                  + (f", val Y-PSNR {val_psnr:.2f} SSIM {val_ssim:.4f}" if val_psnr != "" else ""),
                  flush=True)
            log.writerow([step, f"{mean_loss:.6f}", f"{lr:.3e}", f"{offsets:.3f}", f"{rate:.3f}",
                          val_psnr, val_ssim, f"{time.time() - started:.1f}"])
            log_file.flush()
            if tensorboard is not None:
                scalars = {"loss": mean_loss, "learning_rate": lr, "offset_magnitude": offsets,
                           "val_psnr_y": val_psnr, "val_ssim_y": val_ssim}
                for name, value in scalars.items():
                    if value != "":
                        tensorboard.add_scalar(name, value, step)
            window_start, window_losses = time.time(), []
        if master and (step % config.checkpoint_every == 0 or last_step or timed):
            save(last_path, step)
        if out_of_time:
            break

    # -- the result: the plugin's model file -----------------------------------------------------
    model_path = out_dir / "model.pt" if config.export else None
    if master:
        seconds = time.time() - started
        print(f"trained {step - first_step} steps in {seconds:.1f} s: "
              f"{(step - first_step) / max(seconds, 1e-9):.3f} steps/s", flush=True)
        log_file.close()
        if tensorboard is not None:
            tensorboard.close()
    if master and config.export:
        weights = best_path if best_path.exists() else last_path
        final = build(config.arch, scale=config.scale, **config.network)
        provenance = model_file.load_weights(final, weights)
        saved = provenance["training"]  # the step and total_steps of the checkpoint's weights
        provenance["training"] = {"data": config.data, "degradation": config.degradation,
                                  "iterations": config.iterations, "arch": config.arch,
                                  "init": config.init or None, "step": saved["step"],
                                  "total_steps": saved["total_steps"],
                                  "best_val_psnr_y": best_psnr if math.isfinite(best_psnr) else None}
        model_file.export_model(final, model_path, config.arch, provenance)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return model_path
