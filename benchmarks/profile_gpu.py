"""Where a frame's time goes: torch.profiler over the eager iedvr network, written as a table of
the kernels (CUDA) or operators (CPU) that take the most time, and a Chrome trace.

    python benchmarks/profile_gpu.py --device cuda --size 320x180 --fp16 --out-dir $OUT
    python benchmarks/profile_gpu.py --device cpu --size 64x48 --out-dir /tmp/profile   # anywhere

Writes OUT_DIR/profile-WxH-PRECISION.txt and OUT_DIR/trace-WxH-PRECISION.json (the trace only
when it is under --max-trace-mib: a lent machine returns files of at most 16 MiB). The weights
are the shipped ones where they load (the deformable convolutions' offsets, so their memory
access, depend on them), else an untrained network of the same architecture.
"""

import argparse
import sys
import time
from pathlib import Path

import torch


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    if width % 4 or height % 4:
        raise argparse.ArgumentTypeError(f"width and height must be multiples of 4, got {text}")
    return width, height


def load_network(arch: str, device: torch.device, dtype: torch.dtype):
    from vs_iedvr.network import build

    network = build(arch, scale=4)
    weights = "untrained (random initialisation)"
    default = Path(__import__("vs_iedvr").__file__).parent / "models" / "default.pt"
    if arch == "iedvr-m" and default.exists():
        try:
            from vs_iedvr.training.warm_start import read_initial_weights, warm_start

            warm_start(network, read_initial_weights(default))
            weights = str(default)
        except Exception as error:  # a model file traced by a newer torch than this one
            weights += f"; {default} did not load: {str(error).splitlines()[0][:120]}"
    network = network.to(device, dtype).eval()
    return network, weights


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=parse_size, default=(320, 180), help="input WxH")
    parser.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                        help="float16 (CUDA) or bfloat16 (CPU) weights and frames")
    parser.add_argument("--arch", default="iedvr-m")
    parser.add_argument("--frames", type=int, default=3, help="profiled output frames")
    parser.add_argument("--warmup", type=int, default=3,
                        help="output frames before profiling (cuDNN's choice of algorithms, the "
                             "allocator's first blocks)")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--max-trace-mib", type=float, default=15.0)
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args()

    import vs_iedvr.ops  # noqa: F401  (registers the iedvr operators)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = (torch.float16 if cuda else torch.bfloat16) if args.fp16 else torch.float32
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    network, weights = load_network(args.arch, device, dtype)
    width, height = args.size
    frames = torch.rand(1, network.config.num_frame, 3, height, width, generator=torch.Generator().manual_seed(0))
    frames = frames.to(device, dtype)
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)

    with torch.inference_mode():
        for _ in range(args.warmup):
            network(frames)
        synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profile:
            started = time.perf_counter()
            for _ in range(args.frames):
                network(frames)
            synchronize()
            seconds = (time.perf_counter() - started) / args.frames

    # Self time: a kernel's own time, not its callers' sums, so the top rows are the kernels.
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = profile.key_averages().table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=90)
    name = f"{width}x{height}-{precision}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    header = (f"{args.arch} x4, {width}x{height} input, {precision}, {args.device} "
              f"({torch.cuda.get_device_name(device) if cuda else 'CPU'}), torch {torch.__version__}\n"
              f"weights: {weights}\n{args.frames} frames after {args.warmup} warm-up frames, "
              f"{seconds * 1000:.1f} ms per frame under the profiler; sorted by {sort_by}\n\n")
    table_path = args.out_dir / f"profile-{name}.txt"
    table_path.write_text(header + table + "\n")
    trace_path = args.out_dir / f"trace-{name}.json"
    profile.export_chrome_trace(str(trace_path))
    trace_mib = trace_path.stat().st_size / 2**20
    if trace_mib > args.max_trace_mib:
        trace_path.unlink()
        print(f"trace of {trace_mib:.1f} MiB over {args.max_trace_mib} MiB: not kept")
    print(header + "\n".join(table.splitlines()[: args.rows // 2 + 3]))
    print(f"wrote {table_path}" + (f" and {trace_path}" if trace_path.exists() else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
