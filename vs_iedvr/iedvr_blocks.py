"""The modules that the improved EDVR (Huang and Chen, WACV 2022 workshops) adds: RigidConv
preprocessing and feature enhancement (its Section 2.2), temporal 3D fusion (2.3) and
channel-attention reconstruction (2.4). Where the paper's figures leave a detail open, the choice
and its reason are in docs/architecture.md."""

import torch
from torch import nn

from .conv3d import Conv3d
from .edvr_blocks import leaky_relu


class RigidConvBlock(nn.Module):
    """Inception-style block of small kernels: four branches (1x1; 3x3; two 3x3 for a 5x5 field;
    a depth-wise 3x3 followed by a 1x1) are concatenated, mixed by a 1x1 convolution and added to
    the input (through a 1x1 projection when the block deepens the channels, the paper's
    "Config 1"; the identity when it keeps them, "Config 2")."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        branch = out_channels // 4
        self.branch1 = nn.Conv2d(in_channels, branch, 1)
        self.branch3 = nn.Conv2d(in_channels, branch, 3, 1, 1)
        self.branch5a = nn.Conv2d(in_channels, branch, 3, 1, 1)
        self.branch5b = nn.Conv2d(branch, branch, 3, 1, 1)
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels - 3 * branch, 1)
        self.mix = nn.Conv2d(out_channels, out_channels, 1)
        self.shortcut = (nn.Identity() if in_channels == out_channels
                         else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x):
        branches = torch.cat([
            self.branch1(x),
            self.branch3(x),
            self.branch5b(leaky_relu(self.branch5a(x))),
            self.pointwise(self.depthwise(x)),
        ], dim=1)
        return leaky_relu(self.mix(leaky_relu(branches)) + self.shortcut(x))


class FeatureEnhancementBlock(nn.Module):
    """ResNet's basic block without batch normalisation, with LeakyReLU."""

    def __init__(self, num_feat: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x):
        return leaky_relu(x + self.conv2(leaky_relu(self.conv1(x))))


class FeaturePreprocessing(nn.Module):
    """RigidConv blocks that deepen the channels step by step (Config 1), RigidConv blocks that keep
    them (Config 2), then feature enhancement blocks: one frame [N, 3, H, W] -> [N, C, H, W]."""

    def __init__(self, num_in_ch: int, widths: tuple[int, ...], num_keep: int, num_enhance: int):
        super().__init__()
        blocks, channels = [], num_in_ch
        for width in widths:
            blocks.append(RigidConvBlock(channels, width))
            channels = width
        blocks += [RigidConvBlock(channels, channels) for _ in range(num_keep)]
        self.rigid = nn.Sequential(*blocks)
        self.enhance = nn.Sequential(*[FeatureEnhancementBlock(channels) for _ in range(num_enhance)])

    def forward(self, x):
        return self.enhance(self.rigid(x))


def time_as_depth(frames: torch.Tensor) -> torch.Tensor:
    """[B, T, C, H, W] -> [B, C, T, H, W], time as the 3D convolutions' depth, channels-last 3D:
    the layout oneDNN and cuDNN compute 3D convolutions in. In any other, each convolution and
    each elementwise op between them converts (a quarter of the CPU time of a window, measured
    with `vs-iedvr bench`). A view when `frames` is one already."""
    x = frames.transpose(1, 2)
    if torch.onnx.is_in_onnx_export():  # ONNX has no layouts; its runtimes choose
        return x
    return x.contiguous(memory_format=torch.channels_last_3d)


class Temporal3DFusionBlock(nn.Module):
    """One block of temporal 3D fusion: [B, T, C, H, W] aligned frames -> [B, C, H, W].

    The frames before the reference (in time order) and those after it (in reverse order) each
    end with the reference, and go through the same weights (the front and rear halves share
    them): a 3D convolution computes a joint temporal, spatial and channel attention, and a
    temporal convolution collapses each half to one feature. A depth-wise 3D convolution then
    combines front, reference and rear (the reference's third appearance), and a 3x3 convolution
    refines the result, added to the reference."""

    def __init__(self, num_feat: int, num_frame: int):
        super().__init__()
        self.center = num_frame // 2
        hidden = num_feat // 2
        self.attention_reduce = Conv3d(num_feat, hidden, 1)
        self.attention_conv = Conv3d(hidden, hidden, 3, 1, 1)
        self.attention_expand = Conv3d(hidden, num_feat, 1)
        self.side_fusion = Conv3d(num_feat, num_feat, (self.center + 1, 1, 1))
        self.combine = Conv3d(num_feat, num_feat, 3, 1, (0, 1, 1), groups=num_feat)
        self.conv_out = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, frames):
        x = time_as_depth(frames)
        front = x[:, :, : self.center + 1]
        rear = x[:, :, self.center :].flip(2)
        sides = torch.cat([front, rear], dim=0)  # one batch: the halves share every weight
        attention = self.attention_expand(leaky_relu(self.attention_conv(
            leaky_relu(self.attention_reduce(sides)))))
        side_feat = leaky_relu(self.side_fusion(sides * torch.sigmoid(attention)))
        front_feat, rear_feat = side_feat.chunk(2, dim=0)
        reference = x[:, :, self.center : self.center + 1]
        combined = self.combine(torch.cat([front_feat, reference, rear_feat], dim=2)).squeeze(2)
        return reference.squeeze(2) + self.conv_out(leaky_relu(combined))


class Temporal3DFusion(nn.Module):
    """Cascaded temporal 3D fusion blocks; each one's result replaces the reference frame's
    features for the next, so later blocks refine the fused reference against its neighbours."""

    def __init__(self, num_feat: int, num_frame: int, num_blocks: int):
        super().__init__()
        self.center = num_frame // 2
        self.blocks = nn.ModuleList(Temporal3DFusionBlock(num_feat, num_frame)
                                    for _ in range(num_blocks))

    def forward(self, aligned_feat):
        # Converted once for all blocks; the reference is replaced along the depth, which keeps
        # the layout (a concatenation along T of [B, T, C, H, W] would not).
        x = time_as_depth(aligned_feat)
        fused = aligned_feat[:, self.center]
        for block in self.blocks:
            fused = block(x.transpose(1, 2))
            x = torch.cat([x[:, :, : self.center], fused.unsqueeze(2), x[:, :, self.center + 1 :]],
                          dim=2)
        return fused


class ChannelAttention(nn.Module):
    """Per-channel weights from each channel's mean and maximum: a linear layer squeezes them,
    LeakyReLU, a linear layer restores the channel count, sigmoid."""

    def __init__(self, num_feat: int, reduction: int):
        super().__init__()
        self.squeeze = nn.Linear(2 * num_feat, num_feat // reduction)
        self.restore = nn.Linear(num_feat // reduction, num_feat)

    def forward(self, x):
        stats = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        weights = torch.sigmoid(self.restore(leaky_relu(self.squeeze(stats))))
        return x * weights[:, :, None, None]


class ChannelAttentionBlock(nn.Module):
    """The paper's Reconstruction Block: a residual block whose branch is re-weighted per channel."""

    def __init__(self, num_feat: int = 64, reduction: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.attention = ChannelAttention(num_feat, reduction)

    def forward(self, x):
        return x + self.attention(self.conv2(leaky_relu(self.conv1(x))))
