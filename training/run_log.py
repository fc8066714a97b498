"""What a run shows while it trains: log.csv (and TensorBoard's curves), the deformable
convolutions' offsets, and the progress line."""

import csv
import time
from pathlib import Path

import torch

from vs_iedvr.edvr_blocks import DCNv2Pack

from .config import TrainConfig


# log.csv's columns after "step" and how each is written; a row leaves empty what it lacks.
LOG_COLUMNS = {"loss": ".6f", "learning_rate": ".3e", "offset_magnitude": ".3f",
               "iterations_per_s": ".3f", "val_psnr_y": "", "val_ssim_y": "", "seconds": ".1f",
               "offset_magnitude_max": ".3f", "threads": "d"}


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
