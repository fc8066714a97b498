"""Command line: vs-iedvr (or python -m vs_iedvr) {info,export,selftest,bench}.

    vs-iedvr info                          what is installed, which devices are seen
    vs-iedvr info MODEL [--size 320x180]   a model file: metadata, parameters, FLOPs
    vs-iedvr export --arch iedvr-m [--weights CKPT] --output MODEL
    vs-iedvr export --format onnx --target tensorrt|openvino [--from-model default.pt]
                    [--size 320x180] --output MODEL.onnx     for vs-mlrt (core.trt / core.ov)
    vs-iedvr selftest                      check the compiled operator on every device
    vs-iedvr fetch NAME... [--from FILE]   install an official EDVR model (fetch --list: the names)
    vs-iedvr bench [--size 320x180]        the plugin's speed next to a Python callback's

An error is one line on stderr and a non-zero exit status: 2 for a bad argument or file, 1 for
anything else. --debug (before or after the command) or IEDVR_DEBUG=1 shows its traceback.
"""

import argparse
import json
import platform
import sys
from pathlib import Path

from . import __version__
# run_command and the rest are vs-iedvr-train's too. Nothing imported here imports torch: each
# command imports what it uses, so that an argument error is answered at once.
from .arguments import (ArgumentParser, add_debug_option, describe, parse_command_line,  # noqa: F401
                        parse_hours, parse_size, positive_int, run_command)

# --arch for an EDVR checkpoint of any layout, read from the file.
EDVR_FROM_FILE = "edvr"


def info(args) -> int:
    if args.model is not None:
        return model_info(args)
    print_installation()
    return 0


def print_installation() -> None:
    import torch

    from . import ops

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
    from .fetch import describe_installed
    for line in describe_installed():
        print(f"official model {line}")


def model_info(args) -> int:
    from . import flops, model_file

    path = model_file.shipped_or_path(args.model)  # default.pt: the shipped one, as elsewhere
    _, metadata = model_file.load_model(path)  # loaded for its checks
    width, height = args.size
    print(f"model file: {path}")
    print(f"architecture: {metadata['architecture']}, x{metadata['scale']}, "
          f"{metadata['num_frames']} input frames")
    print(f"parameters: {metadata['parameters']:,}")
    print(f"weights: {json.dumps(metadata['weights'])}")
    print(f"input: {json.dumps(metadata['input'])}")
    print(f"configuration: {json.dumps(metadata['config'])}")
    print(f"written by vs-iedvr {metadata['vs_iedvr_version']}, torch {metadata['torch_version']}, "
          f"format version {metadata['format_version']}")
    # Counted without running the network at that size: a large size would need all its memory.
    count = flops.flops_per_frame_of_config(metadata, height, width)
    print(f"FLOPs per output frame at {width}x{height} input "
          f"({width * metadata['scale']}x{height * metadata['scale']} output): {count / 1e9:.1f} G")
    return 0


def export(args) -> int:
    from . import model_file, onnx_export, weights_file

    if args.format == "onnx" and args.target is None:
        args.parser.error("--format onnx needs --target: " + "; ".join(
            f"{name} ({what})" for name, what in onnx_export.TARGETS.items()))
    if args.format == "model" and (args.target is not None or args.size is not None):
        args.parser.error("--target and --size are for --format onnx; a model file takes any "
                          "frame size")
    if args.from_model is not None:
        if args.arch is not None or args.scale is not None or args.weights is not None:
            args.parser.error("--from-model takes the architecture, scale and weights from the "
                              "model file: leave out --arch, --scale and --weights")
        net, source = weights_file.network_from_model_file(model_file.shipped_or_path(args.from_model))
        arch, weights = source["architecture"], source["weights"]
    else:
        arch, net, weights = network_for_export(args.arch, args.scale, args.weights)
    if args.training_hours is not None:
        if weights in (None, model_file.UNTRAINED):
            args.parser.error("--training-hours records the hours behind trained weights: give "
                              "--weights, or --from-model a file that has them")
        weights["training"] = (weights.get("training") or {}) | {"total_hours": args.training_hours}
    if args.format == "onnx":
        metadata = onnx_export.export_onnx(net, args.output, args.target, arch, args.size,
                                           weights, args.weights_dtype)
        print(f"wrote {args.output}: {metadata['architecture']} x{metadata['scale']} for "
              f"{args.target}, input [1, {3 * metadata['num_frames']}, H, W] "
              f"({metadata['input']['size']}), {metadata['parameters']:,} parameters, "
              f"weights: {metadata['weights']['source']}")
        return 0
    metadata = model_file.export_model(net, args.output, arch, weights, args.weights_dtype)
    print(f"wrote {args.output}: {metadata['architecture']} x{metadata['scale']}, "
          f"{metadata['parameters']:,} parameters, weights: {metadata['weights']['source']}")
    return 0


def network_for_export(arch: str | None, scale: int | None, weights_path: str | None):
    """The architecture's name, the network with the checkpoint's weights loaded, and their
    provenance. An EDVR checkpoint (BasicSR's or ours) says its own layout (frame count, TSA,
    pre-deblurring, restoration at scale 1, sizes): --arch may only name it (edvr, or the edvr-m /
    edvr-l of its sizes). Other checkpoints load into --arch (default iedvr-m) at --scale."""
    from . import edvr_checkpoint, network, weights_file

    if weights_path is None:
        if arch == EDVR_FROM_FILE:
            raise ValueError(f"--arch {EDVR_FROM_FILE} reads the layout from --weights: give the "
                             "checkpoint, or name a preset (edvr-m, edvr-l)")
        return arch or "iedvr-m", network.build(arch or "iedvr-m", scale=scale or 4), None
    state, provenance = weights_file.read_weights(weights_path)
    if not edvr_checkpoint.looks_like_edvr(state):
        if arch == EDVR_FROM_FILE:
            raise ValueError(f"--arch {EDVR_FROM_FILE}: {weights_path} is not an EDVR checkpoint "
                             "(it has neither conv_first nor predeblur weights)")
        net = network.build(arch or "iedvr-m", scale=scale or 4)
        weights_file.load_state_strictly(net, state, weights_path)
        return arch or "iedvr-m", net, provenance
    try:
        config = edvr_checkpoint.edvr_config(state)
        found = edvr_checkpoint.edvr_arch_name(config)
        if arch not in (None, EDVR_FROM_FILE, found):
            raise ValueError(f"--arch {arch} contradicts {weights_path}, which holds an EDVR of the "
                             f"{found} layout ({config.num_feat} features, {config.num_frame} "
                             f"frames, {config.num_reconstruct_block} reconstruction blocks): leave "
                             "--arch out")
        if scale is not None and scale != config.scale:
            raise ValueError(f"--scale {scale} contradicts {weights_path}, whose network has scale "
                             f"{config.scale}: leave --scale out")
        return found, edvr_checkpoint.edvr_network(config, state), provenance
    except edvr_checkpoint.CheckpointLayoutError as error:
        raise ValueError(f"{weights_path} matches no EDVR layout: {error}") from None


def _check_device(device: str, dtype) -> float:
    """Largest difference between the operator with zero offsets and a unit mask and
    torch's conv2d (the two must agree), at EDVR's shapes."""
    import torch
    import torch.nn.functional as F

    from . import ops

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
    import torch

    from . import ops

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
    parser = ArgumentParser(prog="vs-iedvr", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    info_parser = commands.add_parser("info", help="what is installed, or what a model file is")
    info_parser.add_argument("model", nargs="?", help="a model file to describe (a path, or a "
                             "shipped one by name: default.pt)")
    info_parser.add_argument("--size", type=parse_size, default=(320, 180),
                             help="input frame size for the FLOP count, WIDTHxHEIGHT (default 320x180)")
    info_parser.set_defaults(run=info)
    export_parser = commands.add_parser("export", help="write a model file for the plugin, or "
                                        "an ONNX file for vs-mlrt")
    export_parser.defer(add_export_options)
    export_parser.set_defaults(run=export, parser=export_parser)
    commands.add_parser("selftest", help="check the compiled operator on every device").set_defaults(run=selftest)
    from . import fetch  # no torch: its command imports it when it exports
    fetch_parser = commands.add_parser("fetch", help="download an official EDVR model by name and "
                                       "install it for Upscale(model=NAME) (--list: the names)")
    fetch.add_arguments(fetch_parser)
    fetch_parser.set_defaults(run=fetch.command, parser=fetch_parser)
    bench_parser = commands.add_parser("bench", help="frames per second of the plugin and of a "
                                       "Python-callback pipeline, FLOP rates, peak memory")
    bench_parser.defer(add_bench_options)
    add_debug_option(parser, commands)
    return run_command(parse_command_line(parser, commands, argv))


def add_export_options(export_parser: argparse.ArgumentParser) -> None:
    """export's options, whose choices come from modules that import torch."""
    from . import model_file, network, onnx_export

    export_parser.add_argument("--format", choices=("model", "onnx"), default="model",
                               help="model: a model file for core.iedvr.Upscale (default); onnx: "
                               "for vs-mlrt's core.trt.Model / core.ov.Model")
    export_parser.add_argument("--target", choices=sorted(onnx_export.TARGETS),
                               help="with --format onnx: tensorrt (standard DeformConv, opset 19) "
                               "or openvino (org.openvinotoolkit::DeformableConv2D)")
    export_parser.add_argument("--size", type=parse_size, help="with --format onnx: fix the input "
                               "size, WIDTHxHEIGHT (default: any size)")
    export_parser.add_argument("--arch", choices=sorted(network.PRESETS) + [EDVR_FROM_FILE],
                               help="network architecture (default iedvr-m; an EDVR checkpoint's "
                               "own layout, which edvr names)")
    export_parser.add_argument("--scale", type=int, choices=(2, 4), help="upscaling factor (default 4)")
    export_parser.add_argument("--weights", help="checkpoint or state dict (ours or BasicSR's); "
                               "without it the network is untrained")
    export_parser.add_argument("--from-model", help="take the network and its weights from a model "
                               "file instead (a path, or default.pt for the shipped weights)")
    export_parser.add_argument("--training-hours", type=parse_hours, help="the hours of training "
                               "behind the weights, recorded in the file's metadata where the "
                               "checkpoint does not record them (vs-iedvr's record their own)")
    export_parser.add_argument("--output", required=True, help="the file to write")
    export_parser.add_argument("--weights-dtype", choices=sorted(model_file.WEIGHT_DTYPES),
                               default="float32", help="how the weights are stored (float16: "
                               "half the size; inference precision is chosen when loading)")


def add_bench_options(bench_parser: argparse.ArgumentParser) -> None:
    from . import bench

    bench.add_arguments(bench_parser, parse_size)
    bench_parser.set_defaults(run=bench.bench)


if __name__ == "__main__":
    sys.exit(main())
