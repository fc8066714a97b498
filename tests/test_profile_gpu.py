"""benchmarks/profile_gpu.py on the CPU at a tiny size: the table that device_check.sh writes
on a GPU machine, here naming operators instead of kernels."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_profile_table_names_the_convolutions(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_gpu.py"), "--device", "cpu",
         "--size", "32x32", "--no-fp16", "--warmup", "0", "--frames", "1", "--rows", "12",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    table = (tmp_path / "profile-32x32-fp32.txt").read_text()
    assert "iedvr-m x4, 32x32 input, fp32, cpu" in table
    rows = [line.split() for line in table.splitlines() if line.strip().startswith(("aten::", "iedvr::"))]
    assert len(rows) == 12
    names = [row[0] for row in rows]
    # The network's cost: its 2D convolutions (oneDNN on the CPU) at the top.
    assert names[0] in ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution")
    assert "iedvr::modulated_deform_conv2d" in names  # the compiled operator, not a fallback
    # The self CPU times are sorted, largest first.
    percents = [float(row[1].rstrip("%")) for row in rows]
    assert percents == sorted(percents, reverse=True)
    trace = tmp_path / "trace-32x32-fp32.json"
    assert trace.exists() and "iedvr::modulated_deform_conv2d" in trace.read_text()
