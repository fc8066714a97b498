"""Charbonnier loss, sqrt(x^2 + eps^2): L1-like, but smooth at 0 (the paper's Section 2.1)."""

import torch


def charbonnier_loss(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    return torch.sqrt((prediction - target).square() + eps * eps).mean()
