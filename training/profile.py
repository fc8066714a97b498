"""vs-iedvr-train profile: where one training step's time goes on this machine.

    vs-iedvr-train profile --data ... [any train option] [--steps 6]
    ./run profile-train                 # the recipe of the default weights (./run train-default)

Builds the run's network, optimiser and data exactly as `train` does (nothing is written), then
times, per step: making the batch (data generation and loading, here in this process so that it
can be timed, from decoded images already in memory as in a run's steady state; `train` makes it
in --num-workers processes beside the step), the forward pass by module, the loss, the backward
pass split into the deformable convolutions' backward, the ordinary convolutions' backward and the
rest (with the autograd nodes that take most of it), and the optimiser; on the CPU also oneDNN's
kernels (convolutions, matrix products, reorders: calls and time) in one more step. Medians over
--steps steps after --warmup-steps; the backward's parts come from torch.profiler over the same
steps. Steps/s count
the step without the batch (what `train` gets while its workers keep up) and with it (what it gets
where they cannot: one core each). GFLOP/s count three times the forward's FLOPs per step (the
backward computes two products per forward one) against this machine's measured peaks.
"""

import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from vs_iedvr.bench import compute_peak, count_flops
from vs_iedvr.network import build

from .loss import charbonnier_loss
from .checkpoint import prepare_trainee
from .config import TrainConfig
from .processes import low_precision_dtype, start_processes
from .train import load_data


class ModuleTimer:
    """Wall time of each top-level module's forward, by hooks (on the CPU the work is done when
    the module returns; on CUDA each hook synchronises)."""

    def __init__(self, network: torch.nn.Module, device: torch.device):
        self.device, self.seconds, self.started = device, defaultdict(float), {}
        self.handles = []
        for name, module in network.named_children():
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _start(self, name):
        def hook(module, inputs):
            self.started[name] = self._now()
        return hook

    def _stop(self, name):
        def hook(module, inputs, output):
            self.seconds[name] += self._now() - self.started.pop(name)
        return hook

    def take(self) -> dict[str, float]:
        seconds, self.seconds = dict(self.seconds), defaultdict(float)
        return seconds


def backward_parts(events, steps: int) -> dict[str, float]:
    """Seconds per step of the deformable and the ordinary convolutions' backward kernels, from
    torch.profiler's events (their own time, children included)."""
    parts = {"deformable convolutions": 0.0, "convolutions": 0.0}
    for event in events:
        if event.key == "iedvr::modulated_deform_conv2d_backward":
            parts["deformable convolutions"] += event.cpu_time_total
        elif event.key == "aten::convolution_backward":
            parts["convolutions"] += event.cpu_time_total
    return {name: microseconds / 1e6 / steps for name, microseconds in parts.items()}


def largest_other_nodes(events, steps: int, count: int = 4) -> list[tuple[str, float]]:
    """The autograd nodes that take most of the backward's rest, as (name, seconds per step):
    where the next speed-up of the backward is to be found beside the convolutions."""
    prefix = "autograd::engine::evaluate_function: "
    nodes = [(event.key.removeprefix(prefix), event.cpu_time_total / 1e6 / steps)
             for event in events if event.key.startswith(prefix)
             and "ConvolutionBackward" not in event.key and "deform_conv2d" not in event.key]
    return sorted(nodes, key=lambda node: -node[1])[:count]


def onednn_primitives(run_step) -> dict[tuple[str, str], list]:
    """oneDNN's primitives in one call of run_step (CPU), from its verbose log: (kind, propagation)
    -> [calls, seconds]. The log goes to file descriptor 1, redirected to a file meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                run_step()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().splitlines()
    primitives = defaultdict(lambda: [0, 0.0])
    for line in lines:
        # onednn_verbose,[v1,]primitive,exec,cpu,KIND,IMPLEMENTATION,PROPAGATION,...,MILLISECONDS
        fields = line.split(",")
        if not fields[0].endswith("onednn_verbose") or "exec" not in fields[:5]:
            continue
        at = fields.index("exec")
        try:
            milliseconds = float(fields[-1])
        except ValueError:
            continue
        kind, propagation = fields[at + 2], fields[at + 4]
        entry = primitives[(kind, propagation if propagation != "undef" else "")]
        entry[0] += 1
        entry[1] += milliseconds / 1e3
    return dict(primitives)


def profile(config: TrainConfig, steps: int = 6, warmup_steps: int = 2) -> dict:
    """The timings of `steps` training steps of this config; see the module's docstring."""
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"--steps must be at least 1 and --warmup-steps at least 0, got "
                         f"{steps} and {warmup_steps}")
    processes = start_processes(config)  # the device and threads, as train() has them
    device = processes.device
    torch.manual_seed(config.seed)
    network = build(config.arch, scale=config.scale, **config.network)
    dataset, _ = load_data(dataclasses.replace(config, validation_fraction=0.0), network.config.num_frame,
                           Path(config.out_dir), processes)
    # A run's steady state: after its first steps the decoded images come from memory.
    dataset.preload_images()
    trainee = prepare_trainee(network, config, processes, Path(os.devnull) / "no-resume")
    network, optimizer = trainee.network, trainee.optimizer
    amp_dtype = low_precision_dtype(device) if config.amp else None
    autocast = lambda: torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    timer = ModuleTimer(network, device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def batch(step: int):
        samples = [dataset[step * config.batch_size + i] for i in range(config.batch_size)]
        return tuple(torch.stack(parts).to(device) for parts in zip(*samples))

    def clock():
        sync()
        return time.perf_counter()

    def train_step(low, high) -> tuple[float, float, float, float]:
        """One step on a batch; the clock after its forward, loss, backward and optimiser."""
        with autocast():
            out = network(low)
        forward_done = clock()
        loss = charbonnier_loss(out.float(), high)
        loss_done = clock()
        optimizer.zero_grad(set_to_none=True)
        trainee.scaler.scale(loss).backward()
        backward_done = clock()
        trainee.scaler.step(optimizer)
        trainee.scaler.update()
        return forward_done, loss_done, backward_done, clock()

    rows = defaultdict(list)
    network.train()
    for step in range(warmup_steps + steps):
        if step == warmup_steps:
            timer.take()
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            profiler.__enter__()
        started = clock()
        low, high = batch(step)
        made = clock()
        forward_done, loss_done, backward_done, finished = train_step(low, high)
        modules = timer.take()
        if step < warmup_steps:
            continue
        rows["batch"].append(made - started)
        rows["forward"].append(forward_done - made)
        for name, seconds in modules.items():
            rows[f"forward: {name}"].append(seconds)
        rows["forward: the rest"].append(forward_done - made - sum(modules.values()))
        rows["loss"].append(loss_done - forward_done)
        rows["backward"].append(backward_done - loss_done)
        rows["optimizer"].append(finished - backward_done)
        rows["step without the batch"].append(finished - made)
    profiler.__exit__(None, None, None)
    medians = {name: statistics.median(values) for name, values in rows.items()}
    events = profiler.key_averages()
    parts = backward_parts(events, steps)
    for name, seconds in parts.items():
        medians[f"backward: {name}"] = seconds
    medians["backward: the rest"] = medians["backward"] - sum(parts.values())
    # One more step with oneDNN's log: how much of the step its kernels are, and how many calls.
    primitives = onednn_primitives(lambda: train_step(low, high)) if device.type == "cpu" else {}
    with autocast():
        forward_flops = count_flops(lambda: network(low))
    return {"seconds": medians, "rest_nodes": largest_other_nodes(events, steps),
            "onednn": primitives,
            "step_flops": 3 * forward_flops, "device": device,
            "dtype": amp_dtype or torch.float32, "threads": torch.get_num_threads()}


def print_profile(result: dict, config: TrainConfig, peaks: dict) -> None:
    seconds = result["seconds"]
    step, with_batch = seconds["step without the batch"], seconds["step without the batch"] + seconds["batch"]
    print(f"{config.arch} x{config.scale}, batch {config.batch_size} of {config.patch_size}x"
          f"{config.patch_size} patches, {str(result['dtype'])[6:]} autocast, "
          f"{result['device']}, {result['threads']} threads, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, codec fraction {config.codec_fraction:g}")
    print(f"{'part of a step':44s} {'ms':>9s} {'share':>6s}")
    order = (["batch", "forward"]  # the modules in the order they ran
             + [k for k in seconds if k.startswith("forward: ") and k != "forward: the rest"]
             + ["forward: the rest", "loss", "backward", "backward: deformable convolutions",
                "backward: convolutions", "backward: the rest", "optimizer"])
    for name in order:
        label = "  " + name.split(": ", 1)[1] if ": " in name else name
        print(f"{label:44s} {seconds[name] * 1e3:9.1f} {seconds[name] / with_batch:6.1%}")
        if name == "backward: the rest":  # its largest autograd nodes, children included
            for node, node_seconds in result["rest_nodes"]:
                print(f"{'    ' + node[:40]:44s} {node_seconds * 1e3:9.1f} {node_seconds / with_batch:6.1%}")
    if result["onednn"]:
        calls = sum(count for count, _ in result["onednn"].values())
        busy = sum(seconds for _, seconds in result["onednn"].values())
        print(f"oneDNN's kernels in one more step: {calls} calls, {busy * 1e3:.1f} ms "
              f"({busy / step:.1%} of a step without the batch); the rest is PyTorch's work "
              f"around each call and the other kernels")
        for (kind, propagation), (count, seconds) in sorted(result["onednn"].items(),
                                                          key=lambda item: -item[1][1]):
            label = f"  {kind} {propagation}".rstrip()
            print(f"{label:44s} {seconds * 1e3:9.1f} {seconds / with_batch:6.1%} {count:6d} calls")
    rate = result["step_flops"] / step
    print(f"steps/s: {1 / step:.3f} without the batch (workers keeping up), "
          f"{1 / with_batch:.3f} with it (made in the step's process)")
    print(f"training FLOPs per step (3x the forward's): {result['step_flops'] / 1e9:.1f} G; "
          f"{rate / 1e9:.1f} GFLOP/s, "
          + ", ".join(f"{rate / peak:.1%} of the measured {name} peak ({peak / 1e9:.0f} GFLOP/s)"
                      for name, peak in peaks.items()))


def profile_command(args, config: TrainConfig) -> int:
    result = profile(config, args.steps, args.warmup_steps)
    device = result["device"]
    peaks = {"float32": compute_peak(device, torch.float32)}
    if result["dtype"] != torch.float32:
        peaks[str(result["dtype"])[6:]] = compute_peak(device, result["dtype"])
    print_profile(result, config, peaks)
    return 0
