"""A training step of the default weights' recipe, eager against `torch.compile` (inductor),
alternated step by step in one process: does compiling the network pay on this machine?

    .venv/bin/python -P benchmarks/bench_train_compile.py [--rounds 14]

The recipe's step on random pixels, a batch of 4 (alternating_steps.py); the two sides alternate
because this machine's speed drifts by up to 1.6x within minutes. It prints the first compiled
step's seconds (the compilation), the median step of each and the median of the pairs' time
ratios. The deformable convolution is the library's custom operator in both; the compiled
network calls it through its registered fake kernel and autograd formula.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # -P leaves the script's folder off the path
from alternating_steps import RecipeStep, alternate, report  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=14, help="steps of each, in turn (default 14)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    recipe = RecipeStep()
    compiled = torch.compile(recipe.network)
    print(f"first compiled step (the compilation): {recipe.run(compiled):.1f} s", flush=True)
    times = alternate({"eager": recipe.run, "compiled": lambda: recipe.run(compiled)}, args.rounds)
    report(times, slower="eager", faster="compiled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
