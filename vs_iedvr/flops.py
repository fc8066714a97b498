"""Floating-point operations (a multiply-add counts 2) of a network, counted by running it under
torch's FLOP counter: on real tensors, or on the "meta" device for any frame size at no cost."""

import torch
import torch.utils.flop_counter
from torch import nn

from .model_file import PaddedNetwork, config_of
from .network import IEDVR


def count_flops(fn) -> int:
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_per_frame(model: nn.Module, metadata: dict, height: int, width: int) -> int:
    """Floating-point operations (a multiply-add counts 2) for one output frame from input frames
    of height x width, counted by running the model once under torch's FLOP counter."""
    frames = torch.zeros(1, metadata["num_frames"], 3, height, width)
    return count_flops(lambda: model(frames))


def flops_per_frame_of_config(metadata: dict, height: int, width: int) -> int:
    """What flops_per_frame counts, without running the network at that size: the network of the
    metadata's config (with the model file's padding) runs on the "meta" device, whose tensors
    have shapes and no data, so that any size costs milliseconds and no memory. The deformable
    convolution has a fake kernel and a FLOP formula (ops.py) that serve here."""
    with torch.device("meta"):
        network = PaddedNetwork(IEDVR(config_of(metadata))).eval()
        frames = torch.zeros(1, metadata["num_frames"], 3, height, width)
    return count_flops(lambda: network(frames))
