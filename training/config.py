"""TrainConfig: every option of a training run (each field is an option of `vs-iedvr-train train`),
checked when it is made.

Importing this module imports no torch (the checks that need it import it when a config is made),
so that the command line answers a bad option at once.
"""

import dataclasses
import math
from dataclasses import dataclass, field


def option(default, help: str):
    """A TrainConfig field with the sentence that `vs-iedvr-train train --help` shows for it."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list, metadata={"help": (
        "Training sources: clip folders (REDS, Vimeo-90K or one folder per clip), video files, "
        "and stills:FOLDER for photographs turned into clips by synthetic camera motion.")})
    out_dir: str = option("runs/iedvr", "Folder for log.csv, last.pt, best.pt and model.pt; a "
                                        "last.pt found there is resumed.")
    init: str = option("", "Warm start: a model file (the shipped ones by name: default.pt, "
                           "default-x2.pt), a vs-iedvr checkpoint or a BasicSR checkpoint whose "
                           "tensors of matching names and shapes are loaded, with a fresh "
                           "optimiser (ignored when OUT_DIR/last.pt resumes a run).")
    arch: str = option("iedvr-m", "Network preset: iedvr-m (the paper's), edvr-m or edvr-l.")
    network: dict = field(default_factory=dict, metadata={"help": (
        "Changes to the preset's NetworkConfig as NAME=VALUE, e.g. num_feat=32 "
        "num_enhance_block=3.")})
    scale: int = option(4, "Upscaling factor of the network and of the low-resolution input.")
    degradation: str = option("BI", "How the low-resolution input is made: BI (MATLAB bicubic) or "
                                     "BD (Gaussian blur, then every scale-th pixel).")
    still_fraction: float = option(0.0, "Share of the samples drawn from stills:; 0 counts each "
                                        "still as one window among the clips' windows.")
    codec_fraction: float = option(0.0, "Share of the samples whose low-resolution window is "
                                        "encoded with x264 (YUV 4:2:0) at a random CRF and decoded "
                                        "again, as compressed sources are; 0 = clean input only.")
    layered_fraction: float = option(0.0, "Share of the samples that are layered scenes cut "
                                          "from the stills: photographs (shapes, lettering, "
                                          "regular structure, each moving on its own over a "
                                          "moving background, up to the alignment's top speed); "
                                          "validation keeps to the other samples.")
    crf_min: float = option(18.0, "Lowest CRF of the codec samples (best quality).")
    crf_max: float = option(35.0, "Highest CRF of the codec samples (worst quality).")
    image_cache_mb: int = option(2048, "Decoded frames and photographs kept in memory by each "
                                       "data process (least recently used out first); 0 = decode "
                                       "every time.")
    patch_size: int = option(64, "Side of the low-resolution training patch in pixels.")
    batch_size: int = option(8, "Samples per step in each process.")
    iterations: int = option(100_000, "Training steps of the whole run, a resumed one included.")
    learning_rate: float = option(5e-5, "Peak learning rate, reached after the warm-up (the "
                                        "paper's; EDVR used 4e-4).")
    min_learning_rate: float = option(1e-7, "Learning rate at the bottom of each cosine cycle.")
    offset_lr_factor: float = option(0.1, "Multiplier of the learning rate for the deformable "
                                          "convolutions' offset predictors, for stability.")
    warmup_iterations: int = option(500, "Steps of linear warm-up from zero to the learning rate.")
    restart_every: int = option(0, "Steps per cosine cycle; 0 restarts after every pass over the "
                                   "data, as the paper does.")
    weight_decay: float = option(0.0, "Weight decay (L2 penalty) of the Adam optimiser.")
    grad_clip: float = option(0.0, "Largest gradient norm, clipped beyond; 0 turns clipping off.")
    amp: bool = option(True, "Mixed precision: float16 with loss scaling on CUDA, bfloat16 on "
                             "CPUs that compute it natively, float32 elsewhere.")
    channels_last: bool = option(True, "Keep the convolutions' weights channels-last (3D ones "
                                       "channels-last 3D), the faster layout for their kernels.")
    validation_fraction: float = option(0.1, "Share of the sources held out for validation; 0 "
                                             "validates nothing.")
    validation_samples: int = option(16, "Fixed held-out samples scored at each validation.")
    validate_every: int = option(1000, "Steps between validations (and best.pt updates).")
    checkpoint_every: int = option(500, "Steps between writes of last.pt.")
    log_every: int = option(20, "Steps between rows of log.csv and progress lines.")
    num_workers: int = option(2, "Data loader processes making samples.")
    seed: int = option(0, "Seed of the initial weights, the validation split and every sample.")
    device: str = option("auto", "Where to train: auto (CUDA when there is a GPU), cpu, cuda or "
                                 "cuda:N.")
    threads: int = option(0, "CPU threads of torch; 0 keeps torch's default (one per core).")
    adapt_threads: bool = option(True, "On the CPU, measure steps/s now and then with a thread "
                                       "fewer or more (up to --threads) and keep the faster count: "
                                       "beside other work on the same cores, fewer threads than "
                                       "cores train faster (training/threads.py).")
    time_budget_minutes: float = option(0.0, "Stop after this many minutes of wall clock, start-up "
                                             "included, annealing over the time left (a run "
                                             "interrupted before it resumes with the minutes its "
                                             "last.pt had left); 0 = no budget.")
    checkpoint_every_minutes: float = option(0.0, "Also validate and checkpoint this often by the "
                                                  "clock; 0 = by steps only.")
    weights_dir: str = option("", "Folder for last-fp16.pt and best-fp16.pt, the weights alone in "
                                  "float16 that --init and export read; empty = none.")
    export: bool = option(True, "Write the plugin's model file, OUT_DIR/model.pt, at the end.")

    def __post_init__(self):
        """Refuses a value the run cannot use, naming its option: here, before anything starts,
        rather than as an error from deep inside the loop (or a run that trains nothing)."""
        import torch  # here, not at the top: the command line reads the fields without torch

        from vs_iedvr.network import PRESETS, SIZE_MULTIPLE, NetworkConfig

        whole_numbers = {"batch_size": 1, "iterations": 1, "validation_samples": 1,
                         "validate_every": 1, "checkpoint_every": 1, "log_every": 1,
                         "warmup_iterations": 0, "restart_every": 0, "num_workers": 0, "threads": 0,
                         "image_cache_mb": 0}
        for name, least in whole_numbers.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                refuse(name, f"a whole number of at least {least}", value)
        if not isinstance(self.patch_size, int) or self.patch_size < 1 or self.patch_size % SIZE_MULTIPLE:
            # The network takes sizes that its pyramid can halve twice.
            refuse("patch_size", f"a positive multiple of {SIZE_MULTIPLE}", self.patch_size)
        if not is_number(self.learning_rate) or self.learning_rate <= 0:
            refuse("learning_rate", "a positive finite number", self.learning_rate)
        for name in ("min_learning_rate", "offset_lr_factor", "weight_decay", "grad_clip",
                     "time_budget_minutes", "checkpoint_every_minutes"):
            if not is_number(getattr(self, name)) or getattr(self, name) < 0:
                refuse(name, "a finite number of at least 0", getattr(self, name))
        for name in ("still_fraction", "codec_fraction", "layered_fraction"):
            if not is_number(getattr(self, name)) or not 0 <= getattr(self, name) <= 1:
                refuse(name, "a number from 0 to 1", getattr(self, name))
        if not is_number(self.crf_min) or not 0 <= self.crf_min <= 51:
            refuse("crf_min", "an x264 CRF from 0 to 51", self.crf_min)
        if not is_number(self.crf_max) or not self.crf_min <= self.crf_max <= 51:
            refuse("crf_max", f"an x264 CRF from --crf-min ({self.crf_min:g}) to 51", self.crf_max)
        if not is_number(self.validation_fraction) or not 0 <= self.validation_fraction < 1:
            refuse("validation_fraction", "a number from 0 up to (not including) 1",
                   self.validation_fraction)
        if self.arch not in PRESETS:
            refuse("arch", f"one of {', '.join(sorted(PRESETS))}", self.arch)
        if self.scale not in (2, 4):
            refuse("scale", "2 or 4", self.scale)
        if self.degradation not in ("BI", "BD"):
            refuse("degradation", "BI or BD", self.degradation)
        settings = {f.name for f in dataclasses.fields(NetworkConfig)} - {"scale"}
        unknown = sorted(set(self.network) - settings)
        if unknown:
            raise ValueError(f"--network: unknown setting(s) {', '.join(unknown)}"
                             + ("; give the scale with --scale" if "scale" in unknown else
                                f"; expected NAME=VALUE with NAME one of {', '.join(sorted(settings))}"))
        try:  # NetworkConfig checks its values (an odd num_frame, widths that fit, ...)
            dataclasses.replace(PRESETS[self.arch], scale=self.scale, **self.network)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--network: {error}") from None
        if self.device != "auto":
            try:
                device = torch.device(self.device)
            except RuntimeError:
                device = None
            if device is None or device.type not in ("cpu", "cuda"):
                refuse("device", "auto, cpu, cuda or cuda:N", self.device)


def refuse(name: str, expected: str, value) -> None:
    raise ValueError(f"--{name.replace('_', '-')} must be {expected}, got {value!r}")


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
