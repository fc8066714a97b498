"""`vs-iedvr fetch NAME...`: downloads an official EDVR model (model_zoo), checks its SHA-256,
exports it with the layout its weights describe and installs the model file where
`Upscale(clip, model="NAME")` finds it. The filter itself never downloads.

    vs-iedvr fetch edvr-m edvr-l-vimeo       download, check, export, install
    vs-iedvr fetch edvr-m --from FILE         the same from a file downloaded elsewhere
    vs-iedvr fetch --list                     every official model, installed or not

Downloads go through urllib: the usual proxy variables (https_proxy, no_proxy...) apply, an
interrupted download is kept beside the models (downloads/NAME.part) and resumed with a Range
request, progress goes to stderr. A model file appears only complete and checked (written under
a temporary name, then renamed). IEDVR_FETCH_MIRROR=URL fetches every file from URL's host
instead, the path kept (a local mirror; the tests' server); IEDVR_FETCH_TIMEOUT sets --timeout.
"""

import hashlib
import os
import sys
from pathlib import Path

from . import model_zoo
from .download import CHUNK, TIMEOUT_VARIABLE, FetchError, download, mirrored

MIRROR_VARIABLE = "IEDVR_FETCH_MIRROR"
DEFAULT_TIMEOUT = 60.0


# ---- checking and installing -----------------------------------------------------------------

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_hash(entry: model_zoo.Official, path: Path) -> str:
    """The file's SHA-256, if it is the published one (the whole digest where known, else the
    prefix in its file name); raises FetchError otherwise."""
    digest = sha256_of(path)
    if not digest.startswith(entry.sha256):
        what = "SHA-256" if len(entry.sha256) == 64 else "SHA-256 prefix"
        raise FetchError(f"{path.name} has SHA-256 {digest}, not the published {what} "
                         f"{entry.sha256} of {entry.file_name}: a damaged or different file")
    return digest


def install(entry: model_zoo.Official, checkpoint: Path, digest: str, origin: str) -> Path:
    """Exports the checked checkpoint to NAME.pt in the models folder, the network built from the
    layout its weights describe (as `vs-iedvr export` does). The file appears complete or not at
    all (export_model writes a temporary file and renames it)."""
    # torch only here: `fetch --list` and argument errors answer without it.
    from . import edvr_checkpoint, model_file, weights_file

    data = weights_file.load_checkpoint(str(checkpoint), checkpoint, f"the checkpoint {entry.file_name}")
    try:
        state = edvr_checkpoint.basicsr_state(data, entry.key_layout)
        config = edvr_checkpoint.edvr_config(state)
        network = edvr_checkpoint.edvr_network(config, state)
    except edvr_checkpoint.CheckpointLayoutError as error:
        raise FetchError(f"{entry.file_name} matches no EDVR layout: {error}") from None
    weights = {"source": entry.file_name, "sha256": digest, "official_name": entry.name,
               "published_by": entry.publisher, "fetched_from": origin}
    target = model_zoo.installed_path(entry.name)
    try:
        model_file.export_model(network, target, edvr_checkpoint.edvr_arch_name(config), weights)
    finally:
        target.with_name(target.name + ".partial").unlink(missing_ok=True)
    return target


def fetch(entry: model_zoo.Official, timeout: float = DEFAULT_TIMEOUT,
          mirror: str | None = None) -> Path:
    """Downloads, checks and installs one official model; returns the model file. A failed
    download keeps its part for the next try to resume; a file of the wrong hash is deleted."""
    partial = model_zoo.models_folder() / "downloads" / (entry.file_name + ".part")
    errors = []
    for url in entry.urls:
        url = mirrored(url, mirror)
        try:
            download(url, partial, timeout, entry.name)
            digest = check_hash(entry, partial)
        except FetchError as error:
            if "SHA-256" in str(error):
                partial.unlink(missing_ok=True)  # resuming it would only append to a wrong file
            errors.append(error)
            continue
        try:
            return install(entry, partial, digest, url)
        finally:
            partial.unlink(missing_ok=True)
    raise errors[-1] if len(errors) == 1 else FetchError(
        "; ".join(f"{url}: {error}" for url, error in zip(entry.urls, errors)))


def install_from_file(entry: model_zoo.Official, path: Path) -> Path:
    """`--from FILE`: a checkpoint downloaded elsewhere, checked and installed as a download is."""
    if not path.is_file():
        raise FetchError(f"--from {path}: no such file")
    return install(entry, path, check_hash(entry, path), str(path.resolve()))


# ---- the command -----------------------------------------------------------------------------

def size_text(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def describe_installed() -> list[str]:
    """One line per official model: its name, and its file and size or how to fetch it (for
    `vs-iedvr info` and `fetch --list`)."""
    lines = []
    for entry in model_zoo.MODELS:
        path = model_zoo.installed_path(entry.name)
        where = (f"{path} ({size_text(path)})" if path.is_file() else
                 f"not fetched (`{model_zoo.fetch_command(entry.name)}`)")
        lines.append(f"{entry.name}: {where}")
    return lines


def print_list() -> None:
    for entry in model_zoo.MODELS:
        path = model_zoo.installed_path(entry.name)
        state = f"installed, {size_text(path)}" if path.is_file() else "not fetched"
        print(f"{entry.name}  [{state}]  {entry.layout}; for {entry.use_for}; "
              f"{model_zoo.describe_scores(entry)}; {entry.file_name} from {entry.publisher}")


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"official models: {', '.join(model_zoo.names())}")
    parser.add_argument("--list", action="store_true",
                        help="list the official models, installed or not, and exit")
    parser.add_argument("--from", dest="from_file", metavar="FILE",
                        help="install NAME from this checkpoint (downloaded elsewhere) instead "
                        "of downloading it; its SHA-256 is checked as a download's is")
    parser.add_argument("--force", action="store_true",
                        help="fetch again a model that is installed")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help=f"wait this long for a server before giving up (default "
                        f"{DEFAULT_TIMEOUT:g}, or {TIMEOUT_VARIABLE})")


def timeout_of(args) -> float:
    if args.timeout is not None:
        value, name = args.timeout, "--timeout"
    else:
        text, name = os.environ.get(TIMEOUT_VARIABLE), TIMEOUT_VARIABLE
        try:
            value = float(text) if text else DEFAULT_TIMEOUT
        except ValueError:
            value = -1.0
    if not value > 0:
        raise FetchError(f"{name} must be a number of seconds above 0")
    return value


def command(args) -> int:
    """The `fetch` command: an error is one line on stderr, exit status 2 for a bad argument and
    1 for a download or install that failed."""
    if args.list:
        print_list()
        return 0
    if not args.names:
        args.parser.error("name the models to fetch (vs-iedvr fetch --list lists them)")
    unknown = [name for name in args.names if model_zoo.find(name) is None]
    if unknown:
        args.parser.error(f"no official model named {', '.join(unknown)}; the names are "
                          f"{', '.join(model_zoo.names())}")
    if args.from_file is not None and len(args.names) != 1:
        args.parser.error("--from FILE installs one model: name exactly one")
    try:
        timeout = timeout_of(args)
    except FetchError as error:
        args.parser.error(str(error))
    failed = 0
    for name in args.names:
        entry = model_zoo.find(name)
        target = model_zoo.installed_path(entry.name)
        if target.is_file() and not args.force and args.from_file is None:
            print(f"{entry.name} is installed: {target} (--force fetches it again)")
            continue
        try:
            if args.from_file is not None:
                path = install_from_file(entry, Path(args.from_file))
            else:
                path = fetch(entry, timeout, os.environ.get(MIRROR_VARIABLE))
        except (FetchError, ValueError) as error:  # ValueError: a checkpoint torch cannot read
            print(f"error: {entry.name}: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"installed {entry.name}: {path} ({size_text(path)}); use it with "
              f"core.iedvr.Upscale(clip, model=\"{entry.name}\")")
    return 1 if failed else 0
