"""vs-iedvr-train (python -m vs_iedvr.training) {train,evaluate,fetch-data} ...

    vs-iedvr-train train --data clips/ video.mkv stills:photos/ --out-dir runs/x4 \
        [--arch iedvr-m] [--network num_feat=32 num_enhance_block=3] [--iterations 100000] ...
    torchrun --nproc-per-node 2 --no-python vs-iedvr-train train ...   # several processes
    vs-iedvr-train profile --data ... [train's options] [--steps 6]   # where a step's time goes
    vs-iedvr-train evaluate MODEL CLIPS... [--degradation BI] [--crop-border 0] [--fp16] [--plugin]
                                           [--conditions clean crf18 crf23 crf28]
                                           [--metrics psnr ssim vmaf] [--json FILE]
    vs-iedvr-train fetch-data data/default     # the default weights' data, from the registries

Every field of TrainConfig (training/config.py) is an option of `train`. A run writes last.pt
(resumed automatically), best.pt, log.csv and, at the end, the plugin's model file model.pt.

An error is one line on stderr and a non-zero exit status: 2 for a bad option or file, 1 for
anything else. --debug (before or after the command) or IEDVR_DEBUG=1 shows its traceback.
"""

import argparse
import ast
import dataclasses
import sys
from pathlib import Path

# None of these imports torch, so that a bad option is answered at once; each command imports
# what it runs.
from vs_iedvr.arguments import (ArgumentParser, add_debug_option, parse_command_line, positive_int,
                                run_command)

from .config import TrainConfig


def parse_assignment(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, its help the field's sentence and its default."""
    for config_field in dataclasses.fields(TrainConfig):
        option = "--" + config_field.name.replace("_", "-")
        # The field's own default: making a TrainConfig() would check it, which imports torch.
        default = (config_field.default if config_field.default is not dataclasses.MISSING
                   else config_field.default_factory())
        sentence = config_field.metadata["help"]
        if config_field.name == "data":
            parser.add_argument(option, nargs="+", required=True, help=sentence)
        elif config_field.name == "network":
            parser.add_argument(option, nargs="*", type=parse_assignment, default=[],
                                metavar="NAME=VALUE", help=sentence)
        elif isinstance(default, bool):
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{sentence} Default: {'on' if default else 'off'}.")
        else:
            parser.add_argument(option, type=type(default), default=default,
                                help=f"{sentence} Default: {default if default != '' else 'empty'}.")


def config_of(args) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["network"] = dict(values["network"])
    return TrainConfig(**values)


def train_command(args) -> int:
    from .train import train

    model_path = train(config_of(args))
    print(f"model file: {model_path or 'not written (--no-export)'}")
    return 0


def fetch_data_command(args) -> int:
    from .default_data import fetch

    fetch(Path(args.out))
    return 0


def profile_command_of(args) -> int:
    from .profile import profile_command

    return profile_command(args, config_of(args))


def evaluate_command_of(args) -> int:
    from .evaluate import evaluate_command

    return evaluate_command(args)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="vs-iedvr-train", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    train_parser = commands.add_parser(
        "train", help="train a network",
        description="Train a network. Every option is a field of TrainConfig (training/config.py); "
                    "a run resumes from OUT_DIR/last.pt when there is one, writes log.csv as it "
                    "goes (and TensorBoard curves when tensorboard is installed), progress lines "
                    "to stderr, and at the end the plugin's model file OUT_DIR/model.pt.")
    add_config_options(train_parser)
    train_parser.set_defaults(run=train_command)
    profile_parser = commands.add_parser(
        "profile", help="time the parts of a training step",
        description="Time the parts of a training step of the run that `train` with the same "
                    "options would make (nothing is written): the batch, the forward by module, "
                    "the backward (deformable convolutions, convolutions, the rest), the "
                    "optimiser; steps/s and GFLOP/s against this machine's measured peaks.")
    add_config_options(profile_parser)
    profile_parser.add_argument("--steps", type=positive_int, default=6,
                                help="timed steps (default 6)")
    profile_parser.add_argument("--warmup-steps", type=int, default=2,
                                help="untimed steps first (default 2)")
    profile_parser.set_defaults(run=profile_command_of)
    evaluate_parser = commands.add_parser("evaluate",
                                          help="PSNR/SSIM (and VMAF) of a model file on clips")
    evaluate_parser.add_argument("model")
    evaluate_parser.add_argument("clips", nargs="+",
                                 help="ground-truth clips: folders of frames or video files")
    evaluate_parser.add_argument("--cache", default="runs/decoded",
                                 help="where video files are decoded to frames (once)")
    evaluate_parser.add_argument("--degradation", choices=("BI", "BD"), default="BI")
    evaluate_parser.add_argument("--crop-border", type=int, default=0)
    evaluate_parser.add_argument("--conditions", nargs="+", default=["clean"], metavar="SOURCES",
                                 help="clean, and/or crfN: the low-resolution clips encoded whole "
                                      "with x264 at CRF N (YUV 4:2:0) before upscaling, as "
                                      "compressed sources are (default: clean)")
    evaluate_parser.add_argument("--metrics", nargs="+", choices=("psnr", "ssim", "vmaf"),
                                 default=["psnr", "ssim"],
                                 help="psnr (Y and RGB), ssim (Y and RGB), vmaf (ffmpeg's libvmaf, "
                                      "default model, on the same frames; needs an ffmpeg with "
                                      "libvmaf: imageio-ffmpeg's has it) (default: psnr ssim)")
    evaluate_parser.add_argument("--max-frames", type=int, default=0,
                                 help="score the first N frames of each clip (a compressed "
                                 "source is still coded whole); 0 = all")
    evaluate_parser.add_argument("--fp16", action="store_true",
                                 help="run the model in bfloat16, as the plugin's 16-bit CPU inference")
    evaluate_parser.add_argument("--plugin", action="store_true",
                                 help="run the model through core.iedvr.Upscale on the CPU (what a "
                                      "script gets) instead of the eager network")
    evaluate_parser.add_argument("--json", metavar="FILE",
                                 help="also write every figure unrounded (per clip and mean, each "
                                      "condition, method and score, and the PSNR-Y gain) to FILE")
    evaluate_parser.set_defaults(run=evaluate_command_of)
    fetch_parser = commands.add_parser("fetch-data", help="download the default weights' data")
    fetch_parser.add_argument("out", help="folder to fill (train/, held_out/, PROVENANCE.md)")
    fetch_parser.set_defaults(run=fetch_data_command)
    add_debug_option(parser, commands)
    return run_command(parse_command_line(parser, commands, argv))


if __name__ == "__main__":
    sys.exit(main())
