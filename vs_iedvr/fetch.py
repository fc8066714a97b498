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
import html.parser
import http.client
import http.cookiejar
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import model_zoo

MIRROR_VARIABLE = "IEDVR_FETCH_MIRROR"
TIMEOUT_VARIABLE = "IEDVR_FETCH_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
CHUNK = 1 << 20
# A page that asks to confirm a download is small; a model is not read into memory here.
PAGE_LIMIT = 1 << 20


class FetchError(Exception):
    """A download or install that failed; its message is one line that says what to do."""


# ---- downloading -----------------------------------------------------------------------------

def mirrored(url: str, mirror: str | None) -> str:
    """`url` on the mirror's scheme and host, under the mirror's path, its own path and query
    kept."""
    if not mirror:
        return url
    parts, base = urllib.parse.urlsplit(url), urllib.parse.urlsplit(mirror)
    return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path,
                                    parts.query, ""))


class _FormReader(html.parser.HTMLParser):
    """The forms of a page (action and input values) and its links, for Google Drive's
    confirmation page."""

    def __init__(self):
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form":
            self.forms.append((attributes.get("action") or "", {}))
        elif tag == "input" and self.forms and attributes.get("name"):
            self.forms[-1][1][attributes["name"]] = attributes.get("value") or ""
        elif tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])
        self._in_title = tag == "title"

    def handle_endtag(self, tag):
        self._in_title = False if tag == "title" else self._in_title

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def confirmation_url(page: str, page_url: str) -> str | None:
    """The URL that a Google Drive "can't scan this file for viruses" page sends the download to:
    its download form (action and hidden fields), or a link that carries a confirm token (the
    older page). None for any other page (a quota notice, a sign-in page, an error)."""
    reader = _FormReader()
    reader.feed(page)
    for action, fields in reader.forms:
        if "confirm" in fields and "id" in fields:
            query = urllib.parse.urlencode(fields)
            return urllib.parse.urljoin(page_url, action) + "?" + query
    for link in reader.links:
        if "confirm=" in link and "id=" in link:
            return urllib.parse.urljoin(page_url, link)
    return None


def page_title(page: str) -> str:
    reader = _FormReader()
    reader.feed(page)
    return " ".join(reader.title.split()) or "untitled"


class Progress:
    """"NAME: 12.3 of 84.0 MB (14%)" on stderr: rewritten in place on a terminal, a line every few
    seconds otherwise (a log)."""

    def __init__(self, label: str, total: int | None, done: int):
        self.label, self.total, self.done = label, total, done
        self.terminal = sys.stderr.isatty()
        self.shown = time.monotonic()  # a download of seconds shows its last line only

    def add(self, count: int, final: bool = False) -> None:
        self.done += count
        now = time.monotonic()
        if not final and now - self.shown < (0.5 if self.terminal else 5.0):
            return
        self.shown = now
        text = f"{self.label}: {self.done / 1e6:.1f}"
        if self.total:
            text += f" of {self.total / 1e6:.1f} MB ({100 * self.done // self.total}%)"
        else:
            text += " MB"
        end = "\n" if final or not self.terminal else ""
        print(("\r" if self.terminal else "") + text, end=end, file=sys.stderr, flush=True)


def _opener() -> urllib.request.OpenerDirector:
    # build_opener's ProxyHandler reads http_proxy, https_proxy and no_proxy; the cookies carry
    # Google Drive's older download_warning token from its page to the download.
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _open(opener, url: str, offset: int, timeout: float):
    headers = {"User-Agent": "vs-iedvr-fetch"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        raise FetchError(f"{_host(url)} answered {error.code} {error.reason} for {url}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, (TimeoutError, socket.timeout)):
            raise _timed_out(url, timeout) from None
        raise FetchError(f"cannot reach {_host(url)} ({error.reason}) for {url}; behind a proxy, "
                         "set https_proxy") from None
    except (TimeoutError, socket.timeout):
        raise _timed_out(url, timeout) from None
    except (http.client.HTTPException, ConnectionError) as error:
        raise FetchError(f"{_host(url)} closed the connection without an answer "
                         f"({type(error).__name__}) for {url}") from None


def _timed_out(url: str, timeout: float) -> FetchError:
    return FetchError(f"no answer from {_host(url)} within {timeout:g} s; try again later, or "
                      f"wait longer with --timeout (or {TIMEOUT_VARIABLE})")


def _is_page(response) -> bool:
    return response.headers.get_content_type() in ("text/html", "application/xhtml+xml")


def download(url: str, partial: Path, timeout: float, label: str) -> None:
    """Downloads `url` into `partial`, appending to what an earlier, interrupted download left
    there (a Range request; a server that ignores it sends the whole file, which then replaces
    it). Follows Google Drive's confirmation page; any other web page is an error."""
    opener = _opener()
    partial.parent.mkdir(parents=True, exist_ok=True)
    offset = partial.stat().st_size if partial.is_file() else 0
    response = _open(opener, url, offset, timeout)
    try:
        if _is_page(response):
            page = _read_page(response, url, timeout)
            follow = confirmation_url(page, response.geturl())
            if follow is None:
                raise FetchError(f"{_host(url)} sent a web page (\"{page_title(page)}\") instead of "
                                 f"the file: over its download quota, moved, or not public; try "
                                 f"again later, or download {url} in a browser and install it "
                                 "with --from FILE")
            response.close()
            response = _open(opener, follow, offset, timeout)
            if _is_page(response):
                page = _read_page(response, follow, timeout)
                raise FetchError(f"{_host(follow)} sent a web page (\"{page_title(page)}\") "
                                 "instead of the file after its confirmation: over its download "
                                 f"quota? Try again later, or download {url} in a browser and "
                                 "install it with --from FILE")
        _save(response, partial, offset, timeout, label)
    finally:
        response.close()


def _read_page(response, url: str, timeout: float) -> str:
    try:
        return response.read(PAGE_LIMIT).decode("utf-8", "replace")
    except (TimeoutError, socket.timeout):
        raise _timed_out(url, timeout) from None
    except (http.client.HTTPException, ConnectionError) as error:
        raise FetchError(f"the connection to {_host(url)} dropped ({type(error).__name__})") from None


def _save(response, partial: Path, offset: int, timeout: float, label: str) -> None:
    url = response.geturl()
    resumed = offset and response.status == 206
    if resumed:
        start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
        if start != str(offset):
            raise FetchError(f"{_host(url)} resumed at byte {start or '?'} instead of {offset}; "
                             f"delete {partial} and fetch again")
    else:
        offset = 0  # the whole file: it replaces what an earlier download left
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    progress = Progress(label, total, offset)
    written = offset
    try:
        with open(partial, "ab" if resumed else "wb") as file:
            while chunk := response.read(CHUNK):
                file.write(chunk)
                written += len(chunk)
                progress.add(len(chunk))
    except (TimeoutError, socket.timeout):
        raise FetchError(f"{_host(url)} stopped sending after {written:,} of "
                         f"{total or '?':,} bytes (no data for {timeout:g} s); run the command "
                         "again to resume") from None
    except (http.client.IncompleteRead, ConnectionError, http.client.HTTPException) as error:
        raise FetchError(f"the connection to {_host(url)} dropped after {written:,} of "
                         f"{total or '?':,} bytes ({type(error).__name__}); run the command "
                         "again to resume") from None
    size = partial.stat().st_size
    if total is not None and size != total:
        raise FetchError(f"the connection to {_host(url)} dropped after {size:,} of {total:,} "
                         "bytes; run the command again to resume")
    progress.add(0, final=True)


# ---- checking and installing -------------------------------------------------------------------

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
    from . import edvr_checkpoint, model_file

    data = model_file.load_checkpoint(str(checkpoint), checkpoint, f"the checkpoint {entry.file_name}")
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
