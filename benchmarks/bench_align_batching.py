"""A training step with PCD alignment one frame at a time against all the window's frames in one
batch (IEDVR.align_frame_by_frame, align_in_one_batch), alternated step by step in one process:
this machine's speed drifts by up to 1.6x within minutes, and only steps taken in turn compare.

    .venv/bin/python -P benchmarks/bench_align_batching.py [--rounds 14] [--batch 4] [--threads 2]

The default weights' recipe on random pixels (alternating_steps.py). Prints the median step of
each and the median of the pairs' time ratios.

Also the way to check that a step's time is proportional to its work rather than to its number
of calls: `--threads 1` with `--batch 1` and `--batch 4` (four times the pixels, the same calls).
"""

import argparse
import sys
from pathlib import Path

import torch

from vs_iedvr.network import IEDVR

sys.path.insert(0, str(Path(__file__).parent))  # -P leaves the script's folder off the path
from alternating_steps import RecipeStep, alternate, report  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=14, help="steps of each, in turn (default 14)")
    parser.add_argument("--batch", type=int, default=4, help="windows per step (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    if min(args.rounds, args.batch, args.threads) < 1:
        parser.error("--rounds, --batch and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    recipe = RecipeStep(args.batch)
    # A training step records gradients, so align_window takes one batch; each side pins its way.
    chooser = IEDVR.align_window

    def step_with(align):
        def step() -> float:
            IEDVR.align_window = align
            return recipe.run()
        return step

    times = alternate({"frame by frame": step_with(IEDVR.align_frame_by_frame),
                       "one batch": step_with(IEDVR.align_in_one_batch)}, args.rounds)
    IEDVR.align_window = chooser
    report(times, slower="frame by frame", faster="one batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
