"""The processes of a run: one, or several under torchrun, each with its device, and the precision
that device trains in."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vs_iedvr.precision import cpu_has_native_bfloat16

from .config import TrainConfig


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


def low_precision_dtype(device: torch.device) -> torch.dtype | None:
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bfloat16() else None
