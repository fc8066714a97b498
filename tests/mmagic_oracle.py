"""OpenMMLab mmagic's own EDVRNet (mmagic 1.2.0, from its distribution on PyPI) as the oracle of the
mmagic checkpoints' conversion: its edvr_net.py, archs/sr_backbone.py and archs/upsample.py
loaded alone, with small stand-ins for what they import from mmcv, mmengine and the rest of
mmagic. PyPI's sdist of mmagic cannot prepare its metadata here (pip then keeps no archive), so
the files come from its wheel (py3-none-any: the same source files).

The stand-ins keep mmcv's names, which are what a checkpoint's keys are made of: ConvModule holds
its convolution as `conv` (then the activation of act_cfg, LeakyReLU here, or none);
ModulatedDeformConv2d holds `weight` and `bias` and modulated_deform_conv2d computes torchvision's
deform_conv2d with the mask, the offset layout that mmcv and BasicSR share (BasicSR 1.4.2 maps its
own DCN onto torchvision's the same way).

    mmagic = mmagic_edvr()           # the module mmagic.models.editors.edvr.edvr_net, or pytest.skip
    network = mmagic.EDVRNet(3, 3, mid_channels=16, ...)
"""

import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import pytest

from basicsr_oracle import load_source_file

VERSION = "1.2.0"
CACHE = Path.home() / ".cache" / "vs-iedvr-tests"
FILES = ("mmagic/models/editors/edvr/edvr_net.py", "mmagic/models/archs/sr_backbone.py",
         "mmagic/models/archs/upsample.py")


def source_folder() -> Path:
    """The three files, downloaded once into the cache. Each process downloads into a folder of
    its own and renames it into place (pytest-xdist's workers may both start at once)."""
    folder = CACHE / f"mmagic-{VERSION}"
    if not all((folder / name).is_file() for name in FILES):
        CACHE.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=CACHE))
        try:
            download = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                       "--only-binary", ":all:", f"mmagic=={VERSION}", "-d",
                                       str(scratch)], capture_output=True, text=True, timeout=300)
            wheel = scratch / f"mmagic-{VERSION}-py2.py3-none-any.whl"
            if not wheel.is_file():
                pytest.skip(f"mmagic {VERSION} could not be downloaded from PyPI: "
                            f"{(download.stderr.strip().splitlines() or ['?'])[-1]}")
            with zipfile.ZipFile(wheel) as archive:
                for name in FILES:
                    archive.extract(name, scratch / "files")
            try:
                (scratch / "files").rename(folder)
            except OSError:  # another process was first
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def _stand_ins():
    import torch
    from torch import nn
    from torch.nn.modules.utils import _pair
    from torchvision.ops import deform_conv2d

    class ConvModule(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                     act_cfg=dict(type="ReLU")):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
            if act_cfg is None:
                self.activate = nn.Identity()
            else:
                assert act_cfg["type"] == "LeakyReLU", act_cfg
                self.activate = nn.LeakyReLU(act_cfg["negative_slope"])

        def forward(self, x):
            return self.activate(self.conv(x))

    class ModulatedDeformConv2d(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                     dilation=1, groups=1, deform_groups=1, bias=True):
            super().__init__()
            self.in_channels, self.out_channels = in_channels, out_channels
            self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
            self.padding, self.dilation = _pair(padding), _pair(dilation)
            self.groups, self.deform_groups = groups, deform_groups
            self.weight = nn.Parameter(torch.randn(out_channels, in_channels // groups,
                                                   *self.kernel_size) * 0.05)
            self.bias = nn.Parameter(torch.zeros(out_channels))

    def modulated_deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, groups,
                                deform_groups):
        assert groups == 1
        return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding,
                             dilation=dilation, mask=mask)

    class BaseModule(nn.Module):
        def __init__(self, init_cfg=None):
            super().__init__()
            self.init_cfg = init_cfg

    def constant_init(module, val, bias=0):
        nn.init.constant_(module.weight, val)
        nn.init.constant_(module.bias, bias)

    def make_layer(block, num_blocks, **kwarg):
        return nn.Sequential(*[block(**kwarg) for _ in range(num_blocks)])

    _module("mmcv")
    _module("mmcv.cnn", ConvModule=ConvModule)
    _module("mmcv.ops", ModulatedDeformConv2d=ModulatedDeformConv2d,
            modulated_deform_conv2d=modulated_deform_conv2d)
    _module("mmengine")
    _module("mmengine.model", BaseModule=BaseModule)
    _module("mmengine.model.weight_init", constant_init=constant_init,
            kaiming_init=lambda *args, **kwargs: None)
    _module("mmagic")
    _module("mmagic.registry", MODELS=types.SimpleNamespace(
        register_module=lambda *args, **kwargs: (lambda cls: cls)))
    _module("mmagic.models")
    _module("mmagic.models.utils", make_layer=make_layer,
            default_init_weights=lambda *args, **kwargs: None)


def mmagic_edvr() -> types.ModuleType:
    pytest.importorskip("torchvision", reason="torchvision (the deformable convolution of the "
                        "stand-in for mmcv's) is not installed")
    if "mmagic.models.editors.edvr.edvr_net" in sys.modules:
        return sys.modules["mmagic.models.editors.edvr.edvr_net"]
    root = source_folder() / "mmagic"
    _stand_ins()
    archs = _module("mmagic.models.archs")
    archs.__path__ = [str(root / "models" / "archs")]
    backbone = load_source_file("mmagic.models.archs.sr_backbone",
                                root / "models" / "archs" / "sr_backbone.py")
    upsample = load_source_file("mmagic.models.archs.upsample",
                                root / "models" / "archs" / "upsample.py")
    archs.ResidualBlockNoBN = backbone.ResidualBlockNoBN
    archs.PixelShufflePack = upsample.PixelShufflePack
    _module("mmagic.models.editors")
    _module("mmagic.models.editors.edvr")
    return load_source_file("mmagic.models.editors.edvr.edvr_net",
                            root / "models" / "editors" / "edvr" / "edvr_net.py")
