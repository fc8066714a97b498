"""The small network that the model-file, engine and plugin tests run: the paper's architecture
with 16 features and few blocks, so that a frame takes milliseconds."""

import torch

from vs_iedvr import model_file
from vs_iedvr.network import IEDVR, NetworkConfig

SMALL = NetworkConfig(num_feat=16, deformable_groups=4, rigid_widths=(8, 16), num_rigid_keep=1,
                      num_enhance_block=1, num_reconstruct_block=2)


def export_small_network(path, arch: str = "small", weights: dict | None = None) -> IEDVR:
    """A small network with seeded random weights, exported to `path`; returns the network."""
    torch.manual_seed(0)
    net = IEDVR(SMALL).eval()
    model_file.export_model(net, path, arch, weights)
    return net
