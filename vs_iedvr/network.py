"""The network: the improved EDVR and, as configurations of the same class, the EDVR baselines
(every layout of BasicSR's EDVR: any odd frame count, with or without TSA, with the pre-deblurring
module, and restoration at the input's size) and the paper's ablations.

    net = build("iedvr-m")                    # the paper's model: 64 features, 5 frames, x4
    net = build("edvr-m")                     # BasicSR's EDVR-M: its checkpoints load strictly
    net = build("iedvr-m", fusion="tsa")      # an ablation
    out = net(frames)                         # [B, T, 3, H, W] in [0, 1] -> [B, 3, sH, sW]

H and W must be multiples of 4 (three pyramid levels; 16 for scale 1, which works at a quarter of
the input's size); model_file.py wraps the network with the padding and cropping that lift this
for the plugin.
"""

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch._prims_common import suggest_memory_format

from .edvr_blocks import (PCDAlignment, PredeblurModule, ResidualBlockNoBN, TSAFusion, leaky_relu,
                          make_layer)
from .iedvr_blocks import ChannelAttentionBlock, FeaturePreprocessing, Temporal3DFusion

# Input height and width are multiples of this at scales 2 and 4 (NetworkConfig.size_multiple).
SIZE_MULTIPLE = 4


@dataclass(frozen=True)
class NetworkConfig:
    num_feat: int = 64
    num_frame: int = 5
    scale: int = 4
    deformable_groups: int = 8
    # Feature extraction: "rigid" (the paper's preprocessing and enhancement), "edvr" (a convolution
    # and residual blocks), "predeblur" (EDVR's pre-deblurring module, a 1x1 convolution and the
    # residual blocks) or "none" (a convolution only: the paper's identity ablation).
    preprocessing: str = "rigid"
    rigid_widths: tuple[int, ...] = (16, 32, 64)  # Config-1 blocks; the last is num_feat
    num_rigid_keep: int = 2  # Config-2 blocks
    num_enhance_block: int = 7
    num_extract_block: int = 5  # residual blocks of "edvr" extraction
    # "t3d" (temporal 3D fusion), "tsa" (EDVR's attention) or "conv" (EDVR without TSA: a 1x1
    # convolution over the frames' features side by side)
    fusion: str = "t3d"
    num_fusion_block: int = 3
    reconstruction: str = "ca"  # "ca" (channel-attention blocks) or "rb" (EDVR's residual blocks)
    num_reconstruct_block: int = 10
    attention_reduction: int = 4

    def __post_init__(self):
        choices = {"preprocessing": ("rigid", "edvr", "predeblur", "none"),
                   "fusion": ("t3d", "tsa", "conv"), "reconstruction": ("ca", "rb")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.scale not in (1, 2, 4):
            raise ValueError(f"scale must be 1, 2 or 4, got {self.scale}")
        if self.scale == 1 and self.preprocessing != "predeblur":
            raise ValueError("scale 1 (restoration at the input's size) needs preprocessing "
                             "\"predeblur\", whose stride-2 convolutions bring the input down by 4")
        if self.num_frame < 3 or self.num_frame % 2 == 0:
            raise ValueError(f"num_frame must be odd and >= 3, got {self.num_frame}")
        if self.preprocessing == "rigid" and self.rigid_widths[-1] != self.num_feat:
            raise ValueError(f"rigid_widths must end with num_feat ({self.num_feat}), got {self.rigid_widths}")
        if self.num_feat % self.deformable_groups:
            raise ValueError("num_feat must be divisible by deformable_groups")

    @property
    def center(self) -> int:
        return self.num_frame // 2

    @property
    def upsampling(self) -> int:
        """What the upsampler multiplies the features' size by: x4 also for scale 1, whose
        features are at a quarter of the input's size."""
        return 2 if self.scale == 2 else 4

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this: three pyramid levels, and two more
        halvings at scale 1."""
        return 4 * SIZE_MULTIPLE if self.scale == 1 else SIZE_MULTIPLE

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> "NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown network settings: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


PRESETS = {
    "iedvr-m": NetworkConfig(),
    "edvr-m": NetworkConfig(preprocessing="edvr", fusion="tsa", reconstruction="rb"),
    "edvr-l": NetworkConfig(num_feat=128, preprocessing="edvr", fusion="tsa", reconstruction="rb",
                            num_reconstruct_block=40),
}


class IEDVR(nn.Module):
    """Feature extraction per frame, PCD alignment of every frame to the centre one, fusion,
    reconstruction, pixel-shuffle upsampling, plus the bilinearly upsampled centre frame."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        c = config.num_feat
        if config.preprocessing == "rigid":
            self.preprocess = FeaturePreprocessing(3, config.rigid_widths, config.num_rigid_keep,
                                                   config.num_enhance_block)
        elif config.preprocessing == "predeblur":
            self.predeblur = PredeblurModule(num_feat=c, hr_in=config.scale == 1)
            self.conv_1x1 = nn.Conv2d(c, c, 1, 1)
            self.feature_extraction = make_layer(ResidualBlockNoBN, config.num_extract_block,
                                                 num_feat=c)
        else:
            self.conv_first = nn.Conv2d(3, c, 3, 1, 1)
            if config.preprocessing == "edvr":
                self.feature_extraction = make_layer(ResidualBlockNoBN, config.num_extract_block,
                                                     num_feat=c)
        self.conv_l2_1 = nn.Conv2d(c, c, 3, 2, 1)
        self.conv_l2_2 = nn.Conv2d(c, c, 3, 1, 1)
        self.conv_l3_1 = nn.Conv2d(c, c, 3, 2, 1)
        self.conv_l3_2 = nn.Conv2d(c, c, 3, 1, 1)
        self.pcd_align = PCDAlignment(c, config.deformable_groups)
        if config.fusion == "tsa":
            self.fusion = TSAFusion(c, config.num_frame, config.center)
        elif config.fusion == "conv":
            self.fusion = nn.Conv2d(config.num_frame * c, c, 1, 1)
        else:
            self.fusion = Temporal3DFusion(c, config.num_frame, config.num_fusion_block)
        if config.reconstruction == "rb":
            self.reconstruction = make_layer(ResidualBlockNoBN, config.num_reconstruct_block,
                                             num_feat=c)
        else:
            self.reconstruction = make_layer(ChannelAttentionBlock, config.num_reconstruct_block,
                                             num_feat=c, reduction=config.attention_reduction)
        # BasicSR's upsampler: x4 is two pixel-shuffle stages ending at 64 channels.
        self.upconv1 = nn.Conv2d(c, c * 4, 3, 1, 1)
        if config.upsampling == 4:
            self.upconv2 = nn.Conv2d(c, 64 * 4, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv_hr = nn.Conv2d(64 if config.upsampling == 4 else c, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, 3, 3, 1, 1)

    def extract_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame work: [N, 3, H, W] -> the three pyramid levels of features."""
        if self.config.preprocessing == "rigid":
            l1 = self.preprocess(frames)
        elif self.config.preprocessing == "predeblur":
            l1 = self.feature_extraction(self.conv_1x1(self.predeblur(frames)))
        else:
            l1 = leaky_relu(self.conv_first(frames))
            if self.config.preprocessing == "edvr":
                l1 = self.feature_extraction(l1)
        l2 = leaky_relu(self.conv_l2_2(leaky_relu(self.conv_l2_1(l1))))
        l3 = leaky_relu(self.conv_l3_2(leaky_relu(self.conv_l3_1(l2))))
        return l1, l2, l3

    def frame_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All the per-frame work, for the plugin to do once per input frame: the pyramid (l1, l2,
        l3), then the frame's share of each level's first alignment convolution (see
        PCDAlignment.neighbour_terms)."""
        levels = self.extract_features(frames)
        return (*levels, *self.pcd_align.neighbour_terms(list(levels)))

    def reconstruct(self, l1: torch.Tensor, l2: torch.Tensor, l3: torch.Tensor,
                    center_frame: torch.Tensor,
                    neighbour_terms: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Per-window work: pyramid features [B, T, C, h, w] of the window's frames (and, from
        frame_features, their alignment terms, same layout) and its centre frame [B, 3, H, W] ->
        the upscaled centre frame."""
        if neighbour_terms is None:
            aligned = self.align_window([l1, l2, l3])
        else:
            center = self.config.center
            reference_terms = self.pcd_align.reference_terms([l1[:, center], l2[:, center], l3[:, center]])
            aligned = torch.stack([self.pcd_align.forward_split([l1[:, i], l2[:, i], l3[:, i]],
                                                                [term[:, i] for term in neighbour_terms],
                                                                reference_terms)
                                   for i in range(self.config.num_frame)], dim=1)
        if self.config.fusion == "conv":
            aligned = aligned.flatten(1, 2)
        out = self.reconstruction(self.fusion(aligned))
        out = leaky_relu(self.pixel_shuffle(self.upconv1(out)))
        if self.config.upsampling == 4:
            out = leaky_relu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(leaky_relu(self.conv_hr(out)))
        if self.config.scale == 1:
            return out + center_frame
        base = F.interpolate(center_frame, scale_factor=self.config.scale, mode="bilinear",
                             align_corners=False)
        return out + base

    def align_window(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Every frame of the window aligned to the centre one: pyramid levels [B, T, C, h, w] ->
        [B, T, C, H, W]. In one batch while gradients are recorded (training keeps every frame's
        activations for the backward anyway), else frame by frame, so that inference and the
        traced and exported networks hold one frame's alignment activations at a time."""
        if torch.is_grad_enabled():
            return self.align_in_one_batch(levels)
        return self.align_frame_by_frame(levels)

    def align_frame_by_frame(self, levels: list[torch.Tensor]) -> torch.Tensor:
        center = self.config.center
        reference = [level[:, center] for level in levels]
        return torch.stack([self.pcd_align([level[:, i] for level in levels], reference)
                            for i in range(self.config.num_frame)], dim=1)

    def align_in_one_batch(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """PCD alignment treats each sample on its own, so the T frames go through it as one
        batch of B * T, the reference repeated beside each: the same result in a fifth of the
        calls, each five times larger (a CPU training step 1.045x faster)."""
        frames, center = self.config.num_frame, self.config.center
        neighbours = [level.flatten(0, 1) for level in levels]
        references = [level[:, center : center + 1].expand_as(level).flatten(0, 1)
                      .contiguous(memory_format=suggest_memory_format(neighbour))
                      for level, neighbour in zip(levels, neighbours)]
        return self.pcd_align(neighbours, references).unflatten(0, (-1, frames))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            check_input(frames, self.config)
        levels = [level.unflatten(0, (-1, self.config.num_frame))
                  for level in self.extract_features(frames.flatten(0, 1))]
        return self.reconstruct(*levels, frames[:, self.config.center])


def check_input(frames: torch.Tensor, config: NetworkConfig) -> None:
    if frames.dim() != 5 or frames.shape[1] != config.num_frame or frames.shape[2] != 3:
        raise ValueError(f"frames must have shape [batch, {config.num_frame}, 3, height, width], "
                         f"got {list(frames.shape)}")
    multiple = config.size_multiple
    if frames.shape[3] % multiple or frames.shape[4] % multiple:
        raise ValueError(f"height and width must be multiples of {multiple}, got "
                         f"{frames.shape[3]}x{frames.shape[4]}; pad the frames (the model file "
                         "and the plugin do it for you)")


def build(arch: str = "iedvr-m", **overrides) -> IEDVR:
    """A network from a preset name, with optional changes to its configuration."""
    if arch not in PRESETS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(PRESETS)}")
    return IEDVR(replace(PRESETS[arch], **overrides))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def channels_last_format(tensor: torch.Tensor) -> torch.memory_format:
    """The layout oneDNN and cuDNN compute convolutions in fastest: channels-last for 2D
    convolutions' weights and activations, channels-last 3D for the 3D ones' (the engine applies
    the same rule in C++)."""
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(tensor.dim(),
                                                                   torch.contiguous_format)
