"""The parts of EDVR (Wang et al., 2019) that the improved model keeps or offers as ablations,
with BasicSR's module and parameter names so that published EDVR checkpoints load strictly."""

import torch
import torch.nn.functional as F
from torch import nn

from .ops import modulated_deform_conv2d


def leaky_relu(x):
    # In place when no gradient is recorded (inference, and so the traced model file): every call
    # site activates a fresh result that nothing else reads, and at the upscaled size a new
    # tensor is 120 MB to allocate and write (measured: half the time of the out-of-place op).
    return F.leaky_relu(x, negative_slope=0.1, inplace=not torch.is_grad_enabled())


def make_layer(block, count: int, **kwargs) -> nn.Sequential:
    return nn.Sequential(*[block(**kwargs) for _ in range(count)])


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv plus the identity (EDVR's extraction and reconstruction block)."""

    def __init__(self, num_feat: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class DCNv2Pack(nn.Module):
    """Modulated deformable convolution whose offsets and mask are predicted from a separate
    feature (PCD alignment feeds it the neighbour/reference comparison)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
                 deformable_groups: int = 8):
        super().__init__()
        self.padding = padding
        self.deformable_groups = deformable_groups
        taps = kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_offset = nn.Conv2d(in_channels, deformable_groups * 3 * taps, kernel_size, 1,
                                     padding)
        # As BasicSR/mmcv: uniform weights; offsets start at zero (a plain convolution), mask at 0.5.
        bound = 1.0 / (in_channels * taps) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x, feat):
        # BasicSR splits the prediction in thirds (dy, dx, mask) and concatenates the first two
        # again: the same channels in the same order as this slice, without the copy.
        out = self.conv_offset(feat)
        offset_channels = 2 * out.size(1) // 3
        offset, mask = out[:, :offset_channels], out[:, offset_channels:]
        return modulated_deform_conv2d(x, offset, torch.sigmoid(mask), self.weight, self.bias,
                                       padding=self.padding,
                                       deformable_groups=self.deformable_groups)


def upsample2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class PCDAlignment(nn.Module):
    """Pyramid, cascading and deformable alignment of a neighbour's features to the reference's."""

    def __init__(self, num_feat: int = 64, deformable_groups: int = 8):
        super().__init__()
        self.offset_conv1 = nn.ModuleDict()
        self.offset_conv2 = nn.ModuleDict()
        self.offset_conv3 = nn.ModuleDict()
        self.dcn_pack = nn.ModuleDict()
        self.feat_conv = nn.ModuleDict()
        for i in range(3, 0, -1):
            level = f"l{i}"
            self.offset_conv1[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
            if i == 3:
                self.offset_conv2[level] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            else:
                self.offset_conv2[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
                self.offset_conv3[level] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.dcn_pack[level] = DCNv2Pack(num_feat, num_feat, 3, 1, deformable_groups)
            if i < 3:
                self.feat_conv[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.cas_offset_conv1 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.cas_offset_conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.cas_dcnpack = DCNv2Pack(num_feat, num_feat, 3, 1, deformable_groups)

    def forward(self, nbr_feat_l: list[torch.Tensor], ref_feat_l: list[torch.Tensor]):
        first_offsets = [self.offset_conv1[f"l{i}"](torch.cat([nbr_feat_l[i - 1], ref_feat_l[i - 1]], 1))
                         for i in (1, 2, 3)]
        feat = self.pyramid(nbr_feat_l, first_offsets)
        return self.cascade(feat, self.cas_offset_conv1(torch.cat([feat, ref_feat_l[0]], dim=1)))

    # Each first offset convolution reads concat(neighbour, reference), so it is the sum of a
    # convolution of the neighbour and one of the reference. The neighbour's share depends on one
    # frame only: the plugin computes it once per frame instead of once per (frame, window) pair,
    # and the reference's once per window instead of once per frame of the window.

    def neighbour_terms(self, nbr_feat_l: list[torch.Tensor]) -> list[torch.Tensor]:
        """The neighbour's share of each level's first offset convolution (l1, l2, l3)."""
        return [F.conv2d(nbr_feat_l[i - 1], self.offset_conv1[f"l{i}"].weight[:, : nbr_feat_l[0].size(1)],
                         padding=1) for i in (1, 2, 3)]

    def reference_terms(self, ref_feat_l: list[torch.Tensor]) -> list[torch.Tensor]:
        """The reference's share, bias included, of each level's first offset convolution and of
        the cascade's."""
        channels = ref_feat_l[0].size(1)
        terms = [F.conv2d(ref_feat_l[i - 1], self.offset_conv1[f"l{i}"].weight[:, channels:],
                          self.offset_conv1[f"l{i}"].bias, padding=1) for i in (1, 2, 3)]
        terms.append(F.conv2d(ref_feat_l[0], self.cas_offset_conv1.weight[:, channels:],
                              self.cas_offset_conv1.bias, padding=1))
        return terms

    def forward_split(self, nbr_feat_l: list[torch.Tensor], nbr_terms: list[torch.Tensor],
                      ref_terms: list[torch.Tensor]) -> torch.Tensor:
        """forward() from the shares of neighbour_terms() and reference_terms()."""
        feat = self.pyramid(nbr_feat_l, [n + r for n, r in zip(nbr_terms, ref_terms)])
        cascade_weight = self.cas_offset_conv1.weight[:, : feat.size(1)]
        return self.cascade(feat, F.conv2d(feat, cascade_weight, padding=1) + ref_terms[3])

    def pyramid(self, nbr_feat_l: list[torch.Tensor], first_offsets: list[torch.Tensor]) -> torch.Tensor:
        """Coarse to fine: each level's offsets from its first offset convolution's output (before
        the activation) and the coarser level's offsets; the neighbour aligned at l1."""
        upsampled_offset = upsampled_feat = None
        feat = nbr_feat_l[0]
        for i in range(3, 0, -1):
            level = f"l{i}"
            offset = leaky_relu(first_offsets[i - 1])
            if i == 3:
                offset = leaky_relu(self.offset_conv2[level](offset))
            else:
                offset = leaky_relu(self.offset_conv2[level](torch.cat([offset, upsampled_offset], 1)))
                offset = leaky_relu(self.offset_conv3[level](offset))
            feat = self.dcn_pack[level](nbr_feat_l[i - 1], offset)
            if i < 3:
                feat = self.feat_conv[level](torch.cat([feat, upsampled_feat], dim=1))
            if i > 1:
                feat = leaky_relu(feat)
                # Offsets are in pixels of their level: twice as many at the next finer one.
                upsampled_offset = upsample2(offset) * 2
                upsampled_feat = upsample2(feat)
        return feat

    def cascade(self, feat: torch.Tensor, first_offset: torch.Tensor) -> torch.Tensor:
        offset = leaky_relu(self.cas_offset_conv2(leaky_relu(first_offset)))
        return leaky_relu(self.cas_dcnpack(feat, offset))


class PredeblurModule(nn.Module):
    """EDVR's pre-deblurring feature extractor, for blurred input: a small pyramid of residual
    blocks whose coarse levels are upsampled into the fine one. With `hr_in` the input is at the
    output's size and two stride-2 convolutions bring it down by 4 first."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, hr_in: bool = False):
        super().__init__()
        self.hr_in = hr_in
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        if hr_in:
            self.stride_conv_hr1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
            self.stride_conv_hr2 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.stride_conv_l2 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.stride_conv_l3 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.resblock_l3 = ResidualBlockNoBN(num_feat)
        self.resblock_l2_1 = ResidualBlockNoBN(num_feat)
        self.resblock_l2_2 = ResidualBlockNoBN(num_feat)
        self.resblock_l1 = nn.ModuleList([ResidualBlockNoBN(num_feat) for _ in range(5)])

    def forward(self, x):
        feat_l1 = leaky_relu(self.conv_first(x))
        if self.hr_in:
            feat_l1 = leaky_relu(self.stride_conv_hr2(leaky_relu(self.stride_conv_hr1(feat_l1))))
        feat_l2 = leaky_relu(self.stride_conv_l2(feat_l1))
        feat_l3 = leaky_relu(self.stride_conv_l3(feat_l2))
        feat_l3 = upsample2(self.resblock_l3(feat_l3))
        feat_l2 = upsample2(self.resblock_l2_2(self.resblock_l2_1(feat_l2) + feat_l3))
        for block in self.resblock_l1[:2]:
            feat_l1 = block(feat_l1)
        feat_l1 = feat_l1 + feat_l2
        for block in self.resblock_l1[2:]:
            feat_l1 = block(feat_l1)
        return feat_l1


class TSAFusion(nn.Module):
    """EDVR's temporal and spatial attention fusion: [B, T, C, H, W] -> [B, C, H, W]."""

    def __init__(self, num_feat: int = 64, num_frame: int = 5, center_frame_idx: int = 2):
        super().__init__()
        self.center_frame_idx = center_frame_idx
        self.temporal_attn1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.temporal_attn2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.feat_fusion = nn.Conv2d(num_frame * num_feat, num_feat, 1, 1)
        self.max_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg_pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.spatial_attn1 = nn.Conv2d(num_frame * num_feat, num_feat, 1)
        self.spatial_attn2 = nn.Conv2d(num_feat * 2, num_feat, 1)
        self.spatial_attn3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn4 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn5 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn_l1 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn_l2 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.spatial_attn_l3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn_add1 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn_add2 = nn.Conv2d(num_feat, num_feat, 1)

    def forward(self, aligned_feat):
        frames = aligned_feat.shape[1]
        embedding_ref = self.temporal_attn1(aligned_feat[:, self.center_frame_idx])
        embedding = self.temporal_attn2(aligned_feat.flatten(0, 1)).unflatten(0, (-1, frames))
        # Per-frame, per-pixel similarity to the reference: [B, T, 1, H, W].
        corr_prob = torch.sigmoid((embedding * embedding_ref.unsqueeze(1)).sum(2, keepdim=True))
        aligned_feat = (aligned_feat * corr_prob).flatten(1, 2)

        feat = leaky_relu(self.feat_fusion(aligned_feat))
        attn = leaky_relu(self.spatial_attn1(aligned_feat))
        attn = leaky_relu(self.spatial_attn2(torch.cat([self.max_pool(attn), self.avg_pool(attn)], 1)))
        attn_level = leaky_relu(self.spatial_attn_l1(attn))
        attn_level = torch.cat([self.max_pool(attn_level), self.avg_pool(attn_level)], dim=1)
        attn_level = leaky_relu(self.spatial_attn_l2(attn_level))
        attn_level = upsample2(leaky_relu(self.spatial_attn_l3(attn_level)))
        attn = leaky_relu(self.spatial_attn3(attn)) + attn_level
        attn = upsample2(leaky_relu(self.spatial_attn4(attn)))
        attn = self.spatial_attn5(attn)
        attn_add = self.spatial_attn_add2(leaky_relu(self.spatial_attn_add1(attn)))
        # After initialisation attn is about 0.5: the factor 2 keeps feat's scale.
        return feat * torch.sigmoid(attn) * 2 + attn_add
