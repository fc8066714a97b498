"""Command line: python -m vs_iedvr {info,selftest}."""

import argparse
import platform
import sys

import torch
import torch.nn.functional as F

from . import __version__, ops


def info(args) -> int:
    print(f"vs-iedvr {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__}")
    print(f"operator library: {ops.LIBRARY_PATH}")
    print(f"CUDA kernels compiled: {'yes' if ops.has_cuda_kernels() else 'no'}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            print(f"cuda:{index}: {torch.cuda.get_device_name(index)}")
    else:
        print("CUDA devices: none")
    print(f"CPU: {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    return 0


def _check_device(device: str, dtype: torch.dtype) -> float:
    """Largest difference between the operator with zero offsets and a unit mask and
    torch's conv2d (the two must agree), at EDVR's shapes."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 64, 24, 40, generator=generator).to(device, dtype)
    weight = (torch.randn(64, 64, 3, 3, generator=generator) * 0.05).to(device, dtype)
    bias = torch.randn(64, generator=generator).to(device, dtype)
    offset = torch.zeros(1, 2 * 8 * 9, 24, 40, device=device, dtype=dtype)
    mask = torch.ones(1, 8 * 9, 24, 40, device=device, dtype=dtype)
    out = ops.modulated_deform_conv2d(x, offset, mask, weight, bias, padding=1, deformable_groups=8)
    expected = F.conv2d(x.float(), weight.float(), bias.float(), padding=1)
    return (out.float() - expected).abs().max().item()


def selftest(args) -> int:
    info(args)
    checks = [("cpu", torch.float32, 1e-4), ("cpu", torch.bfloat16, 0.1)]
    if torch.cuda.is_available() and ops.has_cuda_kernels():
        checks += [("cuda", torch.float32, 1e-3), ("cuda", torch.float16, 2e-2)]
    failed = 0
    for device, dtype, tolerance in checks:
        error = _check_device(device, dtype)
        ok = error <= tolerance
        failed += not ok
        print(f"modulated_deform_conv2d == conv2d on {device} {str(dtype)[6:]}: "
              f"max error {error:.2e} (tolerance {tolerance:.0e}) {'ok' if ok else 'FAILED'}")
    print("selftest passed" if not failed else f"selftest: {failed} check(s) FAILED")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vs_iedvr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="what is installed and which devices are seen").set_defaults(run=info)
    commands.add_parser("selftest", help="check the compiled operator on every device").set_defaults(run=selftest)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
