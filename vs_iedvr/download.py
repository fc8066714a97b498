"""Downloads for `vs-iedvr fetch` (fetch.py): one URL into a `.part` file, through urllib (so the
usual proxy variables apply), resumed with a Range request when a part is there, following Google
Drive's confirmation page, with progress on stderr. Every failure is a FetchError whose message is
one line that says what to do.
"""

import html.parser
import http.client
import http.cookiejar
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# The variable that sets the wait, named in the message when a server does not answer.
TIMEOUT_VARIABLE = "IEDVR_FETCH_TIMEOUT"
CHUNK = 1 << 20
# A page that asks to confirm a download is small; a model is not read into memory here.
PAGE_LIMIT = 1 << 20


class FetchError(Exception):
    """A download or install that failed; its message is one line that says what to do."""


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
