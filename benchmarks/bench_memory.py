"""Peak memory of core.iedvr.Upscale against the input size: whole frames (tilesize=0) and the
default memory plan (no tilesize), each in a fresh process that upscales one frame of a 5-frame
window, with the plan the filter logged and its estimate beside the measured peak RSS (VmHWM).

    .venv/bin/python benchmarks/bench_memory.py --sizes 320x180 640x360 1920x1080 [--fp16]

Whole frames are only tried where the plan's own estimate for them stays under half of the
memory available now (beyond that the kernel's OOM killer, not a number, would answer).
"""

import argparse
import json
import re
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import hashlib, json, sys, time
    import numpy as np
    import vapoursynth as vs
    core = vs.core
    messages = []
    core.add_log_handler(lambda kind, text: messages.append(text))
    width, height, fp16, tilesize, overlap, model = json.loads(sys.argv[1])
    blank = core.std.BlankClip(width=width, height=height, format=vs.RGBS, length=5)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    def fill(n, f):
        f = f.copy()
        for plane in range(3):
            np.asarray(f[plane])[:] = 0.5 + 0.4 * np.sin(x * 0.05 * (plane + 1) + y * 0.03 + n * 0.2)
        return f
    clip = core.std.ModifyFrame(blank, blank, fill)
    arguments = {"device_index": -1, "fp16": fp16}
    if tilesize is not None:
        arguments["tilesize"] = tilesize
    if overlap is not None:
        arguments["overlap"] = overlap
    if model:
        arguments["model"] = model
    start = time.perf_counter()
    up = core.iedvr.Upscale(clip, **arguments)
    # The base: libtorch, the model and the source frames' filter loaded, before the plan.
    base_kib = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
    frame = up.get_frame(2)
    seconds = time.perf_counter() - start
    # The peak before the digest: copying the planes into bytes would add twice the output frame.
    status = open("/proc/self/status").read()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    digest = hashlib.sha256()
    for plane in range(3):
        for row in np.asarray(frame[plane]):
            digest.update(row.tobytes())
    digest = digest.hexdigest()
    plan = next((m for m in messages if m.startswith("Upscale:")), "")
    sys.stderr.write(json.dumps({"peak": peak_kib * 1024, "base": base_kib * 1024,
                                 "seconds": seconds, "plan": plan,
                                 "sha256": digest}) + "\\n")
""")


def run(width, height, fp16, tilesize, model, overlap=None):
    result = subprocess.run([sys.executable, "-c", CHILD,
                             json.dumps([width, height, fp16, tilesize, overlap, model])],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(result.stderr.strip().splitlines()[-1])


def available_bytes() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0.0


def gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["320x180", "640x360", "1280x720", "1920x1080"],
                        help="input sizes WIDTHxHEIGHT")
    parser.add_argument("--fp16", action="store_true", help="16-bit inference (bfloat16 on the CPU)")
    parser.add_argument("--model", default="", help="a model file (default: the shipped weights)")
    parser.add_argument("--check-tiles", action="store_true",
                        help="where the plan tiles, run its tiles again as an explicit tilesize "
                             "and overlap and compare the frames")
    args = parser.parse_args()
    fp16 = 1 if args.fp16 else 0
    print(f"precision: {'bfloat16' if fp16 else 'float32'}, CPU; memory available now: "
          f"{gib(available_bytes())} GiB")
    print("| input | mode | plan | estimate GiB | peak RSS GiB | above base GiB | above base / estimate | s |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        width, height = map(int, size.split("x"))
        planned = run(width, height, fp16, None, args.model)
        plan = planned.get("plan", "")
        tiles = re.search(r"in tiles of (\d+x\d+) overlapping by (\d+x\d+), features of (\d+)", plan)
        description = (f"tiles {tiles[1]} overlap {tiles[2]}, cache {tiles[3]}" if tiles
                       else "whole, cache " + (re.search(r"features of (\d+)", plan) or ["", "?"])[1])
        estimate = re.search(r"about ([\d.]+) MiB", plan)
        whole_estimate = re.search(r"whole frames would take ([\d.]+) MiB", plan)
        if "error" in planned:
            print(f"| {size} | plan | failed: {planned['error']} | | | | | |")
        else:
            estimate_bytes = float(estimate[1]) * 2**20 if estimate else float("nan")
            above = planned["peak"] - planned["base"]
            print(f"| {size} | plan (no tilesize) | {description} | {gib(estimate_bytes)} "
                  f"| {gib(planned['peak'])} | {gib(above)} | {above / estimate_bytes:.2f} "
                  f"| {planned['seconds']:.1f} |")
        whole_mib = float(whole_estimate[1]) if whole_estimate else (float(estimate[1]) if estimate else 0)
        whole_gib = whole_mib / 1024
        if tiles and args.check_tiles and "error" not in planned:
            explicit = run(width, height, fp16, [int(v) for v in tiles[1].split("x")], args.model,
                           overlap=[int(v) for v in tiles[2].split("x")])
            same = explicit.get("sha256") == planned["sha256"]
            print(f"| {size} | explicit tilesize={tiles[1]}, overlap={tiles[2]} | "
                  f"{'the same frame' if same else 'A DIFFERENT FRAME'} | | "
                  f"{gib(explicit.get('peak', 0))} | | | {explicit.get('seconds', 0):.1f} |")
        if tiles is None and "error" not in planned:
            continue  # the plan already ran whole frames
        if whole_gib * 2**30 > available_bytes() / 2:
            print(f"| {size} | whole (tilesize=0) | skipped: estimated {whole_gib:.2f} GiB | "
                  f"{whole_gib:.2f} | | | | |")
            continue
        whole = run(width, height, fp16, 0, args.model)
        if "error" in whole:
            print(f"| {size} | whole (tilesize=0) | failed: {whole['error']} | | | | | |")
        else:
            above = whole["peak"] - whole["base"]
            print(f"| {size} | whole (tilesize=0) | whole | {whole_gib:.2f} | {gib(whole['peak'])} "
                  f"| {gib(above)} | {above / (whole_gib * 2**30):.2f} | {whole['seconds']:.1f} |")


if __name__ == "__main__":
    main()
