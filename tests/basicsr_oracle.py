"""BasicSR's own EDVR (basicsr 1.4.2, from its source distribution on PyPI) as the oracle of the
EDVR layouts: its edvr_arch.py and arch_util.py loaded alone, with small stand-ins for the
package's registry and logger. Its compiled-ops package is its own deform_conv.py, which imports
without the compiled extension; DCNv2Pack then calls torchvision's deform_conv2d (torchvision of
torch's release is a test dependency). arch_util's `distutils` import is served by setuptools'
shim on Python >= 3.12.

    edvr = basicsr_edvr()            # the module basicsr.archs.edvr_arch, or pytest.skip
    network = edvr.EDVR(num_frame=7, ...)
"""

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import pytest

VERSION = "1.4.2"
CACHE = Path.home() / ".cache" / "vs-iedvr-tests"


def source_folder() -> Path:
    """basicsr/ of the source distribution, downloaded once into the cache."""
    folder = CACHE / f"basicsr-{VERSION}"
    if not (folder / "basicsr" / "archs" / "edvr_arch.py").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        # Each process downloads and extracts into a folder of its own, then renames it into
        # place: tests/test_edvr_layouts.py and tests/test_fetch.py may start at once under xdist.
        scratch = Path(tempfile.mkdtemp(dir=CACHE))
        try:
            # pip saves the archive, then may fail to prepare its metadata (basicsr's build needs
            # torch in isolation): the archive is what counts.
            download = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                       f"basicsr=={VERSION}", "-d", str(scratch)],
                                      capture_output=True, text=True, timeout=300)
            archive = scratch / f"basicsr-{VERSION}.tar.gz"
            if not archive.is_file():
                pytest.skip(f"basicsr {VERSION}'s source distribution could not be downloaded "
                            f"from PyPI: {(download.stderr.strip().splitlines() or ['?'])[-1]}")
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
            try:
                (scratch / f"basicsr-{VERSION}").rename(folder)
            except OSError:  # another process was first
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return folder / "basicsr"


def load_source_file(name: str, path: Path) -> types.ModuleType:
    """The Python file at path as the module `name` (also for tests/mmagic_oracle.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path else []
    sys.modules[name] = module
    return module


def basicsr_edvr() -> types.ModuleType:
    pytest.importorskip("torchvision", reason="torchvision (BasicSR's deformable convolution) is "
                        "not installed: `pip install torchvision` of torch's release")
    if "basicsr.archs.edvr_arch" in sys.modules:
        return sys.modules["basicsr.archs.edvr_arch"]
    pytest.importorskip("setuptools", reason="arch_util imports distutils, which setuptools serves")
    import setuptools  # noqa: F401  (installs the distutils shim)
    root = source_folder()
    _package("basicsr", root)
    utils = _package("basicsr.utils")
    utils.get_root_logger = lambda *args, **kwargs: __import__("logging").getLogger("basicsr")
    registry = types.ModuleType("basicsr.utils.registry")
    registry.ARCH_REGISTRY = types.SimpleNamespace(register=lambda *args: (lambda cls: cls))
    sys.modules["basicsr.utils.registry"] = registry
    _package("basicsr.ops", root / "ops")
    dcn = _package("basicsr.ops.dcn", root / "ops" / "dcn")
    deform_conv = load_source_file("basicsr.ops.dcn.deform_conv", root / "ops" / "dcn" / "deform_conv.py")
    for name in ("ModulatedDeformConvPack", "modulated_deform_conv"):
        setattr(dcn, name, getattr(deform_conv, name))
    _package("basicsr.archs", root / "archs")
    load_source_file("basicsr.archs.arch_util", root / "archs" / "arch_util.py")
    return load_source_file("basicsr.archs.edvr_arch", root / "archs" / "edvr_arch.py")
