"""What the command lines (vs-iedvr, vs-iedvr-train) share: argument types, a parser whose errors
are one line, --debug, and the running of a command with its errors on one line.

Nothing here imports torch (nor does `import vs_iedvr`), so that a mistyped option is answered at
once: importing torch took 25-40 s on a loaded machine. A command imports what it needs when it
runs; a command whose options need torch-importing modules (their choices) adds them only when it
is the one chosen (ArgumentParser.defer).
"""

import argparse
import os
import re
import sys


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x180, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def parse_hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected hours, a number 0 or more, got {text!r}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line (the usage it prints above them is in
    --help), and options that may be added only when this (sub)command is the one parsed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deferred = []
        # Anything that starts with a minus and a digit is a value, not an option (argparse takes
        # only plain negative numbers): `--size -4x5` then reaches parse_size, which says what is
        # wrong with it, instead of "expected one argument". No option here starts with a digit.
        self._negative_number_matcher = re.compile(r"^-\d")

    def defer(self, add_options) -> None:
        """Calls add_options(self) before this parser parses or shows its help, not now: for
        options whose choices come from modules that import torch."""
        self._deferred.append(add_options)

    def _add_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_deferred()
        return super().parse_known_args(args, namespace)

    def format_help(self):
        self._add_deferred()
        return super().format_help()

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_debug_option(parser: argparse.ArgumentParser, subcommands) -> None:
    """--debug before the command and after it. The command's parser leaves the value alone when
    the option is not given after it (SUPPRESS), so that one given before it stands."""
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also IEDVR_DEBUG=1)")
    for subcommand in subcommands.choices.values():
        subcommand.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help="show the traceback of an error (also IEDVR_DEBUG=1)")


def parse_command_line(parser: argparse.ArgumentParser, commands, argv=None) -> argparse.Namespace:
    """parser.parse_args(argv), the command (`commands`, made by add_subparsers without required)
    checked after the options: argparse checks required arguments first, so that `--bogus` alone
    was answered with a missing command rather than the unknown option."""
    args = parser.parse_args(argv)
    if getattr(args, commands.dest) is None:
        parser.error(f"the following arguments are required: {commands.dest} (one of "
                     f"{', '.join(commands.choices)})")
    return args


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's run on for many lines), or its
    type where it has none."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()),
                type(error).__name__)


def describe(error: BaseException) -> str:
    """An exception as one line: an OSError as its file and reason, anything else as the first
    line of its message."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return first_line(error)


def expected_errors() -> tuple[type, ...]:
    """Errors that a bad argument or input file causes, whose message says what to fix: the code
    raises ValueError (ModelFileError among them) for a value it refuses."""
    errors = (ValueError, OSError)
    onnx_export = sys.modules.get("vs_iedvr.onnx_export")  # imported only by commands that use it
    return errors + ((onnx_export.MissingOnnxError,) if onnx_export is not None else ())


def run_command(args) -> int:
    """args.run(args), an error as one line on stderr: the message of an expected one, exit 2; the
    type and message of any other, exit 1. With --debug or IEDVR_DEBUG=1, Python's traceback."""
    if args.debug or os.environ.get("IEDVR_DEBUG") == "1":
        return args.run(args)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if isinstance(error, expected_errors()):
            print(f"error: {describe(error)}", file=sys.stderr)
            return 2
        print(f"error: {type(error).__name__}: {describe(error)} (run with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
