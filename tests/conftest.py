"""Set before any test module imports torch (OpenMP reads it when its library loads), and inherited
by every process the tests start (vspipe, the bench's pipelines, the wheel's venv).

OpenMP's worker threads wait for work by spinning unless OMP_WAIT_POLICY=PASSIVE: on a machine
whose cores other processes keep busy, the spinning threads take turns with the one thread that
has work, and the many small parallel loops of loading a model and planning its memory took a
minute per filter instead of seconds (a bench pipeline: 56 s against 10 s beside one other busy
process on 2 cores). It changes when idle threads sleep, not how work is split: no frame
depends on it. A value already set wins, so OMP_WAIT_POLICY=ACTIVE ./run test runs as before.

Under pytest-xdist (./run test runs a worker per core) each worker and the processes it starts
get their share of the cores as OMP_NUM_THREADS, unless it is set, so that the workers do not each
run a thread per core on the same cores (tests/test_dcn.py raises its own to 2, for the kernels'
parallel parts)."""

import os
import subprocess

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _workers)))

import pytest  # noqa: E402


@pytest.fixture
def run_here(capfd, monkeypatch, tmp_path):
    """`python -m MODULE ARGS...` (vs_iedvr or vs_iedvr.training) run in this process, as its
    main(argv) from `tmp_path`: its exit status (argparse's SystemExit included) and what it wrote
    to file descriptors 1 and 2, so that output from C++ or a library counts too. A fresh process
    per command cost seconds of importing torch; tests/test_cli_errors.py runs the entry points
    themselves in processes."""
    from vs_iedvr.__main__ import main as iedvr_main
    from vs_iedvr.training.__main__ import main as train_main

    mains = {"vs_iedvr": iedvr_main, "vs_iedvr.training": train_main}
    monkeypatch.chdir(tmp_path)

    def run_here(module: str, *args) -> subprocess.CompletedProcess:
        capfd.readouterr()  # what came before is not the command's
        try:
            status = mains[module](list(map(str, args)))
        except SystemExit as exit:
            status = exit.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([module, *map(str, args)], status, out, err)

    return run_here


def pytest_report_header(config):
    """The instruction sets the CPU-dependent code runs with here, and the limits in force
    (`./run test-lesser-cpu` sets them; docs/install.md)."""
    import torch

    from vs_iedvr.precision import cpu_has_native_bfloat16

    limits = {name: os.environ.get(name, "-") for name in
              ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "IEDVR_CPU_BFLOAT16", "IEDVR_CPU_ISA")}
    try:
        native_bfloat16 = "yes" if cpu_has_native_bfloat16() else "no"
    except ValueError as error:
        native_bfloat16 = f"unknown ({error})"
    try:
        import vs_iedvr.ops  # noqa: F401  (loads the operator library)
        loops = "forward {} backward {}".format(*torch.ops.iedvr.cpu_sampling_loops())
    except (ImportError, RuntimeError) as error:  # not built, or a wrong IEDVR_CPU_ISA
        loops = f"unknown ({str(error).splitlines()[0]})"
    return [
        "instruction-set limits: " + ", ".join(f"{k}={v}" for k, v in limits.items()),
        f"in force: ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN bfloat16 "
        f"{'yes' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'}, native bfloat16 "
        f"default {native_bfloat16}, DCN loops {loops}",
    ]
