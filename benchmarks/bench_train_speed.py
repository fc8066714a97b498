"""Training steps/s of this checkout against an earlier commit's training code, in turn (A B A B),
at the default weights' recipe (`./run train-default`: iedvr-m x4, batch 4 of 32x32 patches, one
data worker, from the shipped weights); optionally with a busy command running beside each run.

    .venv/bin/python -P benchmarks/bench_train_speed.py --baseline 8fe0523 [--steps 30 --pairs 3]
    .venv/bin/python -P benchmarks/bench_train_speed.py --baseline 8fe0523 --beside "yes"

Each run is a fresh process that trains --steps steps of the recipe (log every 5, nothing
validated or exported), with the environment of this process. The rate is the median of the
log's 5-step windows after the first (the steady state, without the start-up and the first
batch). The baseline's training/ folder is taken from git; both use the installed vs_iedvr (the
compiled operator of this checkout), unless --whole-package: then the baseline also runs its own
vs_iedvr (network, operator's Python side) with its operator library compiled from its csrc/
(benchmarks/build_ops.py, about a minute), so that changes anywhere in the package count.

--beside COMMAND keeps COMMAND running (started again whenever it ends, in its own session) during
a second run of each side, in turn with the runs alone: how much of its speed training keeps
beside other work.
"""

import argparse
import csv
import io
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "default"

RUN = """
import sys
sys.path.insert(0, sys.argv[1])
from training.train import TrainConfig, train
data = sys.argv[2]
train(TrainConfig(
    data=[f"stills:{data}/train/photos"] + [f"{data}/train/{name}" for name in (
        "diver.mov", "balle-jbart.mp4", "lego.mp4", "vtest.avi", "tree.avi", "balle1-vp9.avi",
        "realshort.mp4")],
    still_fraction=0.6, arch="iedvr-m", scale=4, degradation="BI", patch_size=32, batch_size=4,
    learning_rate=2e-4, warmup_iterations=500, restart_every=2000, num_workers=1,
    init=sys.argv[5], out_dir=sys.argv[3], iterations=int(sys.argv[4]), log_every=5,
    validate_every=10**6, checkpoint_every=10**6, export=False))
"""


def training_code(revision: str | None, folder: Path) -> Path:
    """A folder holding the `training` package of `revision` (None: this checkout's installed
    one, vs_iedvr.training, copied from the source tree)."""
    target = folder / (revision or "checkout")
    if revision is None:
        (target / "training").mkdir(parents=True)
        for path in (ROOT / "training").glob("*.py"):
            (target / "training" / path.name).write_bytes(path.read_bytes())
        return target
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "training"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def whole_package(revision: str, code: Path) -> None:
    """Adds `revision`'s vs_iedvr, with its operator library built from its own csrc/, beside its
    training code: the run's sys.path puts it before the installed package."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "vs_iedvr", "csrc"],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(code, filter="data")
    (code / "benchmarks").mkdir(exist_ok=True)  # build_ops.py compiles the csrc/ beside it
    (code / "benchmarks" / "build_ops.py").write_bytes((ROOT / "benchmarks" / "build_ops.py").read_bytes())
    subprocess.run([sys.executable, "-P", str(code / "benchmarks" / "build_ops.py"), str(code / "ops"),
                    "--cuda", "0"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (code / "vs_iedvr" / "libiedvr_ops.so").write_bytes((code / "ops" / "libiedvr_ops.so").read_bytes())


def steps_per_second(code: Path, out_dir: Path, steps: int) -> float:
    """One run's steady rate: the median of its log's windows after the first."""
    for stale in ("last.pt", "log.csv"):
        (out_dir / stale).unlink(missing_ok=True)
    subprocess.run([sys.executable, "-P", "-c", RUN, str(code), str(DATA), str(out_dir), str(steps),
                    str(ROOT / "vs_iedvr" / "models" / "default.pt")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out_dir / "log.csv") as f:
        rates = [float(row["iterations_per_s"]) for row in csv.DictReader(f) if row["iterations_per_s"]]
    return statistics.median(rates[1:] or rates)


class Beside:
    """COMMAND kept running (restarted whenever it ends) inside a `with`."""

    def __init__(self, command: str):
        self.command, self.process, self.running = shlex.split(command), None, False

    def __enter__(self):
        self.running = True
        self._start()
        return self

    def _start(self):
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)

    def poll(self):
        if self.running and self.process.poll() is not None:
            self._start()

    def __exit__(self, *exc):
        self.running = False
        os.killpg(self.process.pid, 9)
        self.process.wait()


def run_beside(beside: Beside, *args) -> float:
    """steps_per_second with `beside` kept running (checked every second from a thread)."""
    import threading

    done = threading.Event()

    def keep_running():
        while not done.wait(1.0):
            beside.poll()

    with beside:
        watcher = threading.Thread(target=keep_running, daemon=True)
        watcher.start()
        try:
            return steps_per_second(*args)
        finally:
            done.set()
            watcher.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="commit whose training code to compare with")
    parser.add_argument("--whole-package", action="store_true",
                        help="the baseline runs its own vs_iedvr and compiled operator too")
    parser.add_argument("--beside", help="a command to keep running beside this checkout's runs")
    parser.add_argument("--steps", type=int, default=30, help="steps per run (default 30)")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each, in turn (default 3)")
    args = parser.parse_args()
    if not args.baseline and not args.beside:
        parser.error("give --baseline REVISION, --beside COMMAND or both")
    if not (DATA / "train").is_dir():
        parser.error(f"{DATA} is missing: run `.venv/bin/vs-iedvr-train fetch-data {DATA}` first")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        codes = {"this checkout": training_code(None, folder)}
        if args.baseline:
            codes[f"baseline {args.baseline}"] = training_code(args.baseline, folder)
            if args.whole_package:
                whole_package(args.baseline, codes[f"baseline {args.baseline}"])
        elif args.whole_package:
            parser.error("--whole-package needs --baseline")
        sides = {name: (code, None) for name, code in codes.items()}
        if args.beside:
            sides |= {f"{name} beside `{args.beside}`": (code, Beside(args.beside))
                      for name, code in codes.items()}
        rates = {name: [] for name in sides}
        for pair in range(args.pairs):
            for name, (code, beside) in sides.items():
                out_dir = folder / f"run-{list(sides).index(name)}"
                out_dir.mkdir(exist_ok=True)
                started = time.time()
                measure = (lambda *a: run_beside(beside, *a)) if beside else steps_per_second
                rates[name].append(measure(code, out_dir, args.steps))
                print(f"pair {pair + 1}: {name}: {rates[name][-1]:.3f} steps/s "
                      f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    print(f"training steps/s, default recipe, {args.steps} steps a run, median of {args.pairs} "
          f"runs each, in turn; {os.cpu_count()} CPUs")
    for name, values in rates.items():
        line = f"{name:60s} {statistics.median(values):7.3f} steps/s"
        alone = name.split(" beside ")[0]
        if name != "this checkout" and alone == name:
            ratio = statistics.median(a / b for a, b in zip(rates["this checkout"], values))
            line += f"   this checkout / it: {ratio:.2f}x"
        elif alone != name:
            ratio = statistics.median(a / b for a, b in zip(values, rates[alone]))
            line += f"   of its speed alone: {ratio:.0%}"
        print(line + "   runs: " + ", ".join(f"{v:.3f}" for v in values))
    print("(ratios pair by pair, median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
