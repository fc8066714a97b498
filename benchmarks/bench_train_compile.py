"""A training step of the default weights' recipe, eager against `torch.compile` (inductor), in
turn: does compiling the network pay on this machine?

    .venv/bin/python -P benchmarks/bench_train_compile.py [--steps 8 --pairs 2]

Each run is a fresh process: iedvr-m x4, a batch of 4 windows of five 32x32 frames (random
pixels: the step's arithmetic does not depend on them), bfloat16 autocast, Charbonnier loss,
Adam. It prints the first step's seconds (the compilation, for the compiled side) and the median
of the following steps after two more of warm-up. The deformable convolution is the library's
custom operator in both; the compiled network calls it through its registered fake kernel and
autograd formula.
"""

import argparse
import json
import statistics
import subprocess
import sys

STEP = """
import json, sys, time, statistics, torch
import vs_iedvr
from vs_iedvr.network import build
from vs_iedvr.training.loss import charbonnier_loss
compiled, steps = sys.argv[1] == "compiled", int(sys.argv[2])
torch.manual_seed(0)
network = build("iedvr-m", scale=4).train()
optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
model = torch.compile(network) if compiled else network
low, high = torch.rand(4, 5, 3, 32, 32), torch.rand(4, 3, 128, 128)
times = []
for _ in range(steps + 3):
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(low)
    loss = charbonnier_loss(out.float(), high)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    times.append(time.perf_counter() - started)
print(json.dumps({"first_s": times[0], "median_s": statistics.median(times[3:])}))
"""


def run(side: str, steps: int) -> dict:
    child = subprocess.run([sys.executable, "-P", "-c", STEP, side, str(steps)],
                           capture_output=True, text=True)
    if child.returncode:
        raise SystemExit(f"the {side} run failed: {child.stderr.strip().splitlines()[-1]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (default 8)")
    parser.add_argument("--pairs", type=int, default=2, help="runs of each, in turn (default 2)")
    args = parser.parse_args()
    if args.steps < 1 or args.pairs < 1:
        parser.error("--steps and --pairs must be at least 1")
    medians = {"eager": [], "compiled": []}
    print(f"{'run':10s} {'first step s':>12s} {'median step ms':>15s}")
    for _ in range(args.pairs):
        for side in medians:
            result = run(side, args.steps)
            medians[side].append(result["median_s"])
            print(f"{side:10s} {result['first_s']:12.1f} {result['median_s'] * 1000:15.1f}", flush=True)
    ratios = [e / c for e, c in zip(medians["eager"], medians["compiled"])]
    print(f"compiled / eager steps/s, pair by pair: {', '.join(f'{r:.2f}x' for r in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
