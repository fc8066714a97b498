"""benchmarks/average_weights.py: the averaged checkpoint holds each tensor's mean and exports."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_the_average_is_each_tensors_mean_and_warm_starts(tmp_path):
    from vs_iedvr.training.warm_start import read_initial_weights

    generator = torch.Generator().manual_seed(0)
    states = [{"a.weight": torch.randn(3, 4, generator=generator), "b.bias": torch.randn(5, generator=generator)}
              for _ in range(3)]
    paths = []
    for number, state in enumerate(states):
        path = tmp_path / f"step-{number}.pt"
        torch.save({"model": state, "config": {}, "total_steps": 100 + number,
                    "total_hours": 2.0 + number}, path)
        paths.append(path)
    output = tmp_path / "averaged.pt"
    result = subprocess.run([sys.executable, "-P", str(ROOT / "benchmarks" / "average_weights.py"),
                             str(output), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    averaged = read_initial_weights(output)
    assert averaged.steps == 102 and averaged.hours == 4.0
    for name in states[0]:
        expected = (states[0][name] + states[1][name] + states[2][name]) / 3
        torch.testing.assert_close(averaged.state[name], expected)
