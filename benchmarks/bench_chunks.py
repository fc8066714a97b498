"""What a chunk costs beyond its frames, with vspipe run as av1an runs it (one
`vspipe -c y4m -s START -e END script.vpy -` process per chunk; a cluster's job array does the same),
for docs/scaling-out.md.

A chunk of frames A..B pays, on top of its frames:
- the start-up of vspipe, Python and VapourSynth (measured with a script that does not call Upscale);
- Upscale's start-up: libtorch's engine, the model file, the memory plan (which runs the network at
  two small sizes);
- the features of the 4 frames A-2, A-1, B+1, B+2 that its first and last windows read (for the
  5-frame model) and that no output frame of the chunk needs otherwise.

It times, each in a fresh process, the same generated clip (moving colour waves, RGBS, upscaled,
then YUV 4:2:0 10-bit for y4m): vspipe without Upscale, `vspipe --info` (Upscale created: libtorch,
engine, model; no frame), chunks of several lengths in the middle of the clip, and the whole clip.
Inside one process per repeat (an Upscale per pattern, taken in turn) it times output frames
requested in order (one new frame's features per window), every other frame (two, as each instance
of the multi-GPU recipe) and every fifth frame (five, no reuse): their differences give a frame's
features. Medians over --repeats, in wall seconds and CPU seconds (all threads of the process).
About 3 minutes at the defaults on 2 idle cores with AMX (estimated; 5 minutes measured with --passive
--repeats 2 on a busy machine). On a busy machine add --passive
(OMP_WAIT_POLICY=PASSIVE): without it, spinning threads made Upscale's start-up take over a minute.

    .venv/bin/python benchmarks/bench_chunks.py [--size 320x180] [--frames 10] [--chunks 1 6]
                                                [--repeats 3] [--fp16 default|0|1] [--passive]
"""

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VSPIPE = Path(sys.executable).with_name("vspipe")

# The source: smooth colour waves drifting 2 pixels a frame, computed per frame (cheap next to
# Upscale). `upscale` and `fp16` come from `vspipe -a` (strings) or the caller's globals.
SOURCE = """
import numpy as np
import vapoursynth as vs
core = vs.core

def picture(n, f):
    out = f.copy()
    y, x = np.mgrid[0:{height}, 0:{width}].astype(np.float32)
    for c in range(3):
        wave = 0.5 + 0.35 * np.sin(0.05 * (x - 2 * n) + 0.031 * (c + 1) * y + 1.7 * c)
        np.asarray(out[c])[:] = wave
    return out

blank = core.std.BlankClip(format=vs.RGBS, width={width}, height={height}, length={length},
                           fpsnum=24000, fpsden=1001)
clip = core.std.ModifyFrame(blank, blank, picture)
fp16 = globals().get("fp16", "default")
upscale_args = {{"device_index": -1}} if fp16 == "default" else {{"device_index": -1, "fp16": int(fp16)}}
"""

SCRIPT = SOURCE + """
if globals().get("upscale", "1") == "1":
    clip = core.iedvr.Upscale(clip, **upscale_args)
clip = core.resize.Bicubic(clip, format=vs.YUV420P10, matrix_s="709")
clip.set_output()
"""

# Seconds per output frame inside one process: one Upscale instance per request pattern (each has
# its own feature cache), the patterns taken in turn so that the machine's drift and the first
# frames' one-time costs fall on all of them alike; the first WARM frames of each are not counted.
# Prints `pattern wall-seconds CPU-seconds` lines.
IN_PROCESS = SOURCE + """
import time
frames = {{
    "in_order": [2 + k for k in range({count})],         # each window adds one frame's features
    "every_other": [2 + 2 * k for k in range({count})],  # two
    "every_fifth": [2 + 5 * k for k in range({count})],  # five: no reuse
}}
instances = {{pattern: core.iedvr.Upscale(clip, **upscale_args) for pattern in frames}}
for k in range({count}):
    for pattern, numbers in frames.items():
        start, cpu = time.perf_counter(), time.process_time()
        instances[pattern].get_frame(numbers[k])
        if k >= {warm}:
            print(pattern, time.perf_counter() - start, time.process_time() - cpu)
"""
IN_PROCESS_WARM, IN_PROCESS_MEASURED = 2, 2



def cpu_description() -> str:
    model, flags = "unknown CPU", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    extras = [name for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"),
                                      ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags]
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores of an {model}" + (f" ({', '.join(extras[:2])})" if extras else "")


def timed_run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"failed: {shlex.join(command)}\n{result.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def in_process(code: str, env: dict[str, str]) -> dict[str, list[tuple[float, float]]]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"the in-process measurement failed:\n{result.stderr}")
    times: dict[str, list[tuple[float, float]]] = {}
    for line in result.stdout.splitlines():
        pattern, wall, cpu = line.split()
        times.setdefault(pattern, []).append((float(wall), float(cpu)))
    return times


def derive(median: dict[str, float], per_frame: dict[str, float], chunks: list[int]) -> dict[str, float]:
    """The cost model's terms from one metric (wall or CPU seconds). A chunk of L frames away from
    the clip's ends takes base + upscale_start + 4 * feature + L * in_order; a 1-frame chunk is
    base + upscale_start + every_fifth (its one window computes all 5 frames' features)."""
    d = {"base": median["no Upscale, 1 frame"], "in_order": per_frame["in_order"],
         "every_other": per_frame["every_other"], "every_fifth": per_frame["every_fifth"]}
    d["feature"] = (d["every_fifth"] - d["in_order"]) / 4
    shortest = min(chunks)
    d["upscale_start"] = (median[f"chunk of {shortest}"] - d["base"] - d["every_fifth"]
                          - (shortest - 1) * d["in_order"])
    d["engine_load"] = median["Upscale created, no frame"] - d["base"]
    d["fixed"] = d["base"] + d["upscale_start"] + 4 * d["feature"]
    return d


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="320x180", help="input WxH (default 320x180)")
    parser.add_argument("--frames", type=int, default=10, help="the clip's length (default 10)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 6],
                        help="chunk lengths, each taken from the middle of the clip (default 1 6); "
                             "the shortest gives Upscale's start-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp16", default="default", choices=["default", "0", "1"],
                        help="Upscale's fp16 (default: the plugin's default for this CPU)")
    parser.add_argument("--passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE in the measured processes: on a busy machine, "
                             "threads that wait then sleep instead of spinning, so that CPU seconds "
                             "count the work (wall seconds are then what a user would not get)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.frames < max(args.chunks) + 4:
        parser.error(f"--frames must be at least the longest chunk + 4 ({max(args.chunks) + 4}), "
                     "so that every chunk has two frames before and after it")
    env = dict(os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if args.passive else {}))

    folder = Path(tempfile.mkdtemp(prefix="bench-chunks-"))
    script = folder / "chunks.vpy"
    script.write_text(SCRIPT.format(width=width, height=height, length=args.frames))
    count = IN_PROCESS_WARM + IN_PROCESS_MEASURED
    code = IN_PROCESS.format(width=width, height=height, length=5 * count + 3, count=count,
                             warm=IN_PROCESS_WARM).replace('globals().get("fp16", "default")',
                                                           repr(args.fp16))
    vspipe = [str(VSPIPE), "-c", "y4m"] + ([] if args.fp16 == "default" else ["-a", f"fp16={args.fp16}"])

    def chunk(length):
        start = (args.frames - length) // 2
        return start, start + length - 1

    middle = args.frames // 2
    commands = {"no Upscale, 1 frame": vspipe + ["-a", "upscale=0", "-s", str(middle), "-e", str(middle)],
                "Upscale created, no frame": vspipe + ["--info"]}
    for length in args.chunks:
        a, b = chunk(length)
        commands[f"chunk of {length}"] = vspipe + ["-s", str(a), "-e", str(b)]
    commands[f"whole clip ({args.frames})"] = list(vspipe)
    for command in commands.values():
        command += [str(script), "-"]

    load_before = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    frames: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for name, command in commands.items():
            times[name].append(timed_run(command, env))
        for pattern, values in in_process(code, env).items():
            frames.setdefault(pattern, []).extend(values)
    load_after = os.getloadavg()

    metrics = {}
    for index, metric in enumerate(("wall", "CPU")):
        median = {name: statistics.median(t[index] for t in values) for name, values in times.items()}
        per_frame = {pattern: statistics.median(t[index] for t in values) for pattern, values in frames.items()}
        metrics[metric] = (median, derive(median, per_frame, args.chunks))

    print(f"CPU: {cpu_description()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
          + ("; OMP_WAIT_POLICY=PASSIVE" if args.passive else ""))
    print(f"clip: {width}x{height} RGBS, {args.frames} frames, Upscale x4 fp16={args.fp16}, "
          f"y4m YUV420P10 to a pipe; medians of {args.repeats} runs; wall s / CPU s (all threads)")
    print(f"script: {script} (vspipe -a upscale=0 skips Upscale)")
    print()
    print("| command | median wall s | runs wall s | model wall s | median CPU s | model CPU s |")
    print("|---|---|---|---|---|---|")
    for name, command in commands.items():
        shown = shlex.join(["vspipe"] + command[1:-2] + ["chunks.vpy", "-"])
        cells = [f"`{shown}`"]
        for metric in ("wall", "CPU"):
            median, d = metrics[metric]
            if name.startswith(("no Upscale", "Upscale created")):
                model = ""
            else:  # start-up + the ends' features + the frames
                length = args.frames if name.startswith("whole") else int(name.split()[-1])
                ends = 0 if name.startswith("whole") else 4 * d["feature"]
                model = f"{d['base'] + d['upscale_start'] + ends + length * d['in_order']:.2f}"
            cells.append(f"{median[name]:.2f}")
            if metric == "wall":
                cells.append(" ".join(f"{t[0]:.2f}" for t in times[name]))
            cells.append(model)
        print("| " + " | ".join(cells) + " |")
    print()

    def both(key: str, digits: int = 2) -> str:
        return " / ".join(f"{metrics[m][1][key]:.{digits}f}" for m in ("wall", "CPU"))

    def share(numerator: str, denominator: str) -> str:
        return " / ".join(f"{metrics[m][1][numerator] / metrics[m][1][denominator]:.1%}" for m in ("wall", "CPU"))

    print("Inside one process (an Upscale per pattern, medians over the repeats' frames), s per output frame, wall / CPU:")
    print(f"  frames in order (1 frame's features per window):    {both('in_order', 3)}")
    print(f"  every other frame (2, each multi-GPU instance):      {both('every_other', 3)}")
    print(f"  every fifth frame (5, no reuse):                     {both('every_fifth', 3)}")
    print(f"  one frame's features ((every fifth - in order) / 4): {both('feature', 3)} "
          f"= {share('feature', 'in_order')} of an in-order frame")
    print()
    print("A chunk's cost beyond its frames, wall / CPU s:")
    print(f"  vspipe + Python + VapourSynth + source (no Upscale):  {both('base')}")
    print(f"  Upscale start-up (engine, model, memory plan):        {both('upscale_start')} "
          f"(1-frame chunk - no-Upscale run - one window without reuse)")
    print(f"    of which libtorch, the engine and the model (vspipe --info - no Upscale): {both('engine_load')}")
    print(f"  features of the 4 frames past the chunk's ends:      {both('feature')} x 4")
    print(f"  total: {both('fixed')} s = " + " / ".join(
        f"{metrics[m][1]['fixed'] / metrics[m][1]['in_order']:.1f}" for m in ("wall", "CPU"))
        + " frames' work")
    for length in (24, 120, 240, 1000):
        print(f"  chunk of {length:5d} frames: +" + " / +".join(
            f"{metrics[m][1]['fixed'] / (length * metrics[m][1]['in_order']):.1%}" for m in ("wall", "CPU"))
            + " over its frames' work")
    print("Two instances, each keeping every other frame: " + " / ".join(
        f"{2 * metrics[m][1]['in_order'] / metrics[m][1]['every_other']:.2f}x" for m in ("wall", "CPU"))
        + " one instance's rate (if each had its own device)")


if __name__ == "__main__":
    main()
