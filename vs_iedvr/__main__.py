"""Command line: vs-iedvr (or python -m vs_iedvr) {info,export,selftest,bench}.

    vs-iedvr info                          what is installed, which devices are seen
    vs-iedvr info MODEL [--size 320x180]   a model file: metadata, parameters, FLOPs
    vs-iedvr export --arch iedvr-m [--weights CKPT] --output MODEL
    vs-iedvr selftest                      check the compiled operator on every device
    vs-iedvr bench [--size 320x180]        the plugin's speed next to a Python callback's
"""

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from . import __version__, bench, model_file, network, ops


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x180, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def info(args) -> int:
    if args.model is not None:
        return model_info(args)
    print_installation()
    return 0


def print_installation() -> None:
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
    plugin = Path(__file__).parent.parent / "vapoursynth" / "plugins" / "iedvr" / "libiedvr_vs.so"
    print(f"VapourSynth plugin: {plugin if plugin.exists() else 'not installed'}")
    default_model = Path(__file__).parent / "models" / "default.pt"
    print(f"default model: {default_model if default_model.exists() else 'none installed yet (pass model=...)'}")


def model_info(args) -> int:
    model, metadata = model_file.load_model(args.model)
    width, height = args.size
    print(f"model file: {args.model}")
    print(f"architecture: {metadata['architecture']}, x{metadata['scale']}, "
          f"{metadata['num_frames']} input frames")
    print(f"parameters: {metadata['parameters']:,}")
    print(f"weights: {json.dumps(metadata['weights'])}")
    print(f"input: {json.dumps(metadata['input'])}")
    print(f"configuration: {json.dumps(metadata['config'])}")
    print(f"written by vs-iedvr {metadata['vs_iedvr_version']}, torch {metadata['torch_version']}, "
          f"format version {metadata['format_version']}")
    flops = model_file.flops_per_frame(model, metadata, height, width)
    print(f"FLOPs per output frame at {width}x{height} input "
          f"({width * metadata['scale']}x{height * metadata['scale']} output): {flops / 1e9:.1f} G")
    return 0


def export(args) -> int:
    net = network.build(args.arch, scale=args.scale)
    weights = model_file.load_weights(net, args.weights) if args.weights else None
    metadata = model_file.export_model(net, args.output, args.arch, weights, args.weights_dtype)
    print(f"wrote {args.output}: {metadata['architecture']} x{metadata['scale']}, "
          f"{metadata['parameters']:,} parameters, weights: {metadata['weights']['source']}")
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
    print_installation()
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
    parser = argparse.ArgumentParser(prog="vs-iedvr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    info_parser = commands.add_parser("info", help="what is installed, or what a model file is")
    info_parser.add_argument("model", nargs="?", help="a model file to describe")
    info_parser.add_argument("--size", type=parse_size, default=(320, 180),
                             help="input frame size for the FLOP count, WIDTHxHEIGHT (default 320x180)")
    info_parser.set_defaults(run=info)
    export_parser = commands.add_parser("export", help="write a model file for the plugin")
    export_parser.add_argument("--arch", choices=sorted(network.PRESETS), default="iedvr-m")
    export_parser.add_argument("--scale", type=int, choices=(2, 4), default=4)
    export_parser.add_argument("--weights", help="checkpoint or state dict (ours or BasicSR's); "
                               "without it the network is untrained")
    export_parser.add_argument("--output", required=True, help="the model file to write")
    export_parser.add_argument("--weights-dtype", choices=sorted(model_file.WEIGHT_DTYPES),
                               default="float32", help="how the weights are stored (float16: "
                               "half the size; inference precision is chosen when loading)")
    export_parser.set_defaults(run=export)
    commands.add_parser("selftest", help="check the compiled operator on every device").set_defaults(run=selftest)
    bench_parser = commands.add_parser("bench", help="frames per second of the plugin and of a "
                                       "Python-callback pipeline, FLOP rates, peak memory")
    bench.add_arguments(bench_parser, parse_size)
    bench_parser.set_defaults(run=bench.bench)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except model_file.ModelFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
