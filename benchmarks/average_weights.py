"""The uniform average of several checkpoints' (or model files') weights, as a float32 vs-iedvr
checkpoint that `vs-iedvr export --weights` and `vs-iedvr-train train --init` read: a check of
what averaging the weights along a run (SWA, EMA) would add (docs/training.md, stage 7).

    python -P benchmarks/average_weights.py averaged.pt run/step-1750.pt run/step-2000.pt ...
    .venv/bin/vs-iedvr export --arch iedvr-m --scale 4 --weights averaged.pt --output averaged-model.pt
"""

import argparse
from pathlib import Path

import torch

from vs_iedvr.training.warm_start import read_initial_weights


def average(paths: list[Path]) -> tuple[dict[str, torch.Tensor], int, float | None]:
    """The mean of every tensor over the files (the same names in each), and the most steps and
    hours behind any of them (the hours None unless every file records them)."""
    weights = [read_initial_weights(path) for path in paths]
    names = weights[0].state.keys()
    for path, each in zip(paths, weights):
        if each.state.keys() != names:
            raise SystemExit(f"{path}: not the same tensors as {paths[0]}")
    mean = {name: sum(each.state[name].float() for each in weights) / len(weights) for name in names}
    hours = [each.hours for each in weights]
    return mean, max(each.steps for each in weights), None if None in hours else max(hours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("weights", type=Path, nargs="+")
    args = parser.parse_args()
    state, steps, hours = average(args.weights)
    # What --init and export read: the weights, the steps and hours behind them, the config naming
    # the files.
    torch.save({"model": state, "step": 0, "total_steps": steps, "total_hours": hours,
                "config": {"averaged": [str(path) for path in args.weights]}}, args.output)
    print(f"wrote {args.output}: the mean of {len(args.weights)} files' weights")


if __name__ == "__main__":
    main()
