"""Which devices the tests can use."""

import pytest
import torch

import vs_iedvr.ops


def cuda_available() -> bool:
    return torch.cuda.is_available() and vs_iedvr.ops.has_cuda_kernels()


requires_cuda = pytest.mark.skipif(
    not cuda_available(), reason="needs a CUDA GPU and the library's CUDA kernels"
)
