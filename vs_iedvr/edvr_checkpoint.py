"""The configuration of an EDVR checkpoint read from its state dict, so that every layout of
BasicSR's EDVR loads by naming the file alone: the feature count, the frame count, TSA or a plain
fusion convolution, the pre-deblurring module, restoration at the input's size (hr_in) and the
block counts.

    config = edvr_config(state)          # NetworkConfig, or CheckpointLayoutError
    network = edvr_network(config, state)  # its network with the weights, or CheckpointLayoutError
    arch = edvr_arch_name(config)        # "edvr-m", "edvr-l" or "edvr"

BasicSR's option files (options/test/EDVR/*.yml) give the official models' settings; each one is
a combination of what is read here.
"""

import re

import torch

from .network import PRESETS, IEDVR, NetworkConfig

# The block counts are read from the keys; everything else from a shape.
TAPS = 9  # the deformable convolutions' 3x3 kernel


class CheckpointLayoutError(ValueError):
    """A state dict that is no layout of EDVR this network builds."""


def _count(state: dict, pattern: str) -> int:
    found = {int(m[1]) for key in state if (m := re.fullmatch(pattern, key))}
    return max(found) + 1 if found else 0


def looks_like_edvr(state: dict) -> bool:
    """EDVR's first convolution, plain or in the pre-deblurring module (the improved network
    has RigidConv preprocessing instead)."""
    return "conv_first.weight" in state or "predeblur.conv_first.weight" in state


def edvr_config(state: dict[str, torch.Tensor]) -> NetworkConfig:
    """The NetworkConfig that the keys and shapes of `state` describe (edvr_network checks that
    its network has exactly those)."""
    if "conv_l2_1.weight" not in state:
        raise CheckpointLayoutError("it has no conv_l2_1.weight (the second pyramid level's "
                                    "convolution), which every EDVR has")
    num_feat = state["conv_l2_1.weight"].shape[0]
    if "predeblur.conv_first.weight" in state:
        preprocessing = "predeblur"
    elif "conv_first.weight" in state:
        preprocessing = "edvr"
    else:
        raise CheckpointLayoutError("it has neither conv_first.weight nor "
                                    "predeblur.conv_first.weight (the first convolution)")
    # BasicSR's EDVR upscales x4, or restores at the input's size with hr_in.
    scale = 1 if "predeblur.stride_conv_hr1.weight" in state else 4
    if "fusion.feat_fusion.weight" in state:
        fusion, fused = "tsa", state["fusion.feat_fusion.weight"]
    elif "fusion.weight" in state:
        fusion, fused = "conv", state["fusion.weight"]
    else:
        raise CheckpointLayoutError("it has neither fusion.feat_fusion.weight (TSA) nor "
                                    "fusion.weight (a fusion convolution)")
    if fused.dim() != 4 or fused.shape[1] % num_feat:
        raise CheckpointLayoutError(f"its fusion takes {fused.shape[1] if fused.dim() else '?'} "
                                    f"channels, not a multiple of its {num_feat} features")
    offsets = state.get("pcd_align.dcn_pack.l1.conv_offset.weight")
    if offsets is None or offsets.shape[0] % (3 * TAPS):
        raise CheckpointLayoutError("its pcd_align.dcn_pack.l1.conv_offset.weight is missing or "
                                    "not 3 x 9 channels per deformable group")
    values = dict(num_feat=num_feat, num_frame=fused.shape[1] // num_feat, scale=scale,
                  deformable_groups=offsets.shape[0] // (3 * TAPS), preprocessing=preprocessing,
                  fusion=fusion, reconstruction="rb",
                  num_extract_block=_count(state, r"feature_extraction\.(\d+)\.conv1\.weight"),
                  num_reconstruct_block=_count(state, r"reconstruction\.(\d+)\.conv1\.weight"))
    try:
        return NetworkConfig(**values)
    except ValueError as error:
        raise CheckpointLayoutError(f"its layout ({values}) is not one this network builds: "
                                    f"{error}") from None


def edvr_network(config: NetworkConfig, state: dict[str, torch.Tensor]) -> IEDVR:
    """The network of `config` with the weights of `state`, whose every key and shape it has."""
    network = IEDVR(config)
    check_layout(network, state)
    network.load_state_dict(state, strict=True)
    return network


def check_layout(network: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raises CheckpointLayoutError naming the first key or shape of `state` that `network` does
    not have, or the first of the network's keys that `state` lacks."""
    own = network.state_dict()
    for key, tensor in state.items():
        if key not in own:
            raise CheckpointLayoutError(f"it has {key}, which no EDVR layout has here")
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise CheckpointLayoutError(f"its {key} is {list(tensor.shape)}, where the layout its "
                                        f"other keys describe needs {list(own[key].shape)}")
    for key in own:
        if key not in state:
            raise CheckpointLayoutError(f"it lacks {key}")


def edvr_arch_name(config: NetworkConfig) -> str:
    """The preset whose sizes the configuration has (edvr-m: 64 features and 10 reconstruction
    blocks; edvr-l: 128 and 40), whatever its frame count, fusion and pre-deblurring; else edvr."""
    for name in ("edvr-m", "edvr-l"):
        preset = PRESETS[name]
        if (config.num_feat, config.num_reconstruct_block) == (preset.num_feat,
                                                              preset.num_reconstruct_block):
            return name
    return "edvr"


def basicsr_state(checkpoint, key_layout: str) -> dict[str, torch.Tensor]:
    """The state dict, in BasicSR's key names, of an official checkpoint: BasicSR's ("params_ema"
    or "params") or mmagic's ("state_dict", its generator's keys converted)."""
    if not isinstance(checkpoint, dict):
        raise CheckpointLayoutError("it is no dict of weights")
    if key_layout == "mmagic":
        return basicsr_state_from_mmagic(checkpoint.get("state_dict", checkpoint))
    state = checkpoint.get("params_ema", checkpoint.get("params", checkpoint))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointLayoutError("it holds no state dict under 'params_ema' or 'params'")
    return state


# mmagic's EDVRNet (mmagic/models/editors/edvr/edvr_net.py) computes what BasicSR's EDVR computes;
# its names differ: the generator's prefix, mmcv's ConvModule wraps a convolution as `.conv`, and
# these modules are named otherwise.
MMAGIC_RENAMES = (
    (r"^pcd_alignment\.", "pcd_align."),
    (r"^feat_l2_conv1\.", "conv_l2_1."), (r"^feat_l2_conv2\.", "conv_l2_2."),
    (r"^feat_l3_conv1\.", "conv_l3_1."), (r"^feat_l3_conv2\.", "conv_l3_2."),
    (r"^upsample1\.upsample_conv\.", "upconv1."), (r"^upsample2\.upsample_conv\.", "upconv2."),
    (r"\.conv\.(weight|bias)$", r".\1"),
)


def is_mmagic_checkpoint(checkpoint) -> bool:
    """A checkpoint of mmagic (or mmedit) whose generator is an EDVRNet."""
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    return isinstance(state, dict) and "generator.conv_first.weight" in state


def basicsr_state_from_mmagic(state: dict) -> dict[str, torch.Tensor]:
    """An mmagic EDVR state dict ("generator.pcd_alignment.offset_conv1.l3.conv.weight", ...) in
    BasicSR's names ("pcd_align.offset_conv1.l3.weight"); the model's other entries (mmagic's
    step counter, its data preprocessor's buffers) are left out."""
    converted = {}
    for key, tensor in state.items():
        if not key.startswith("generator."):
            continue
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointLayoutError(f"its {key} is no tensor")
        name = key[len("generator."):]
        for pattern, replacement in MMAGIC_RENAMES:
            name = re.sub(pattern, replacement, name)
        converted[name] = tensor
    if not converted:
        raise CheckpointLayoutError("it has no generator.* weights (mmagic's EDVRNet)")
    return converted
