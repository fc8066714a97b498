"""A web server on 127.0.0.1, in a thread, for tests/test_fetch.py: it serves files by path (with
Range requests, as download.openmmlab.com does) and by Google Drive id, imitating Drive's answer
to a large file (a "can't scan this file for viruses" page whose form, sent back with its confirm
token and uuid, gives the file). Each file can misbehave: drop the connection half way (always,
or only the first time), answer with a quota page, or not answer at all.

    with FileServer() as server:
        server.files["/x.pth"] = data; server.drive["ID"] = data
        server.behaviour["/x.pth"] = "drop-once"
        server.url  # http://127.0.0.1:PORT
        server.requests  # [(path with query, Range header or None), ...]
"""

import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONFIRM, UUID = "t", "5a3b2c1d-test"
QUOTA_PAGE = (b"<html><head><title>Google Drive - Quota exceeded</title></head><body>Too many "
              b"users have viewed or downloaded this file recently.</body></html>")


class FileServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drive: dict[str, bytes] = {}
        self.behaviour: dict[str, str] = {}  # path or drive id -> drop, drop-once, quota,
        # stall (no answer), stall-mid (half the file, then nothing)
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()  # ends the stalled answers
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                if parts.path == "/uc" and query.get("id") in server.drive:
                    return self.confirmation_page(query["id"])
                if parts.path == "/download" and query.get("id") in server.drive:
                    if (query.get("confirm"), query.get("uuid")) != (CONFIRM, UUID):
                        return self.page(QUOTA_PAGE)
                    return self.send_file(query["id"], server.drive[query["id"]])
                if parts.path in server.files:
                    return self.send_file(parts.path, server.files[parts.path])
                self.send_error(404)

            def confirmation_page(self, file_id):
                if server.behaviour.get(file_id) == "quota":
                    return self.page(QUOTA_PAGE)
                if server.behaviour.get(file_id) == "stall":
                    server.release.wait(30)
                    return None
                form = (f'<html><head><title>Google Drive - Virus scan warning</title></head>'
                        f'<body><form id="download-form" action="{server.url}/download" '
                        f'method="get"><input type="submit" value="Download anyway"/>'
                        f'<input type="hidden" name="id" value="{file_id}">'
                        f'<input type="hidden" name="export" value="download">'
                        f'<input type="hidden" name="confirm" value="{CONFIRM}">'
                        f'<input type="hidden" name="uuid" value="{UUID}"></form></body></html>')
                return self.page(form.encode())

            def page(self, body: bytes):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def send_file(self, key, data: bytes):
                behaviour = server.behaviour.get(key)
                if behaviour == "stall":
                    server.release.wait(30)
                    return
                start = 0
                wanted = self.headers.get("Range")
                if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
                    start = int(wanted[len("bytes="):-1])
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if behaviour == "stall-mid":  # half the file, then silence
                    self.wfile.write(data[start:len(data) // 2])
                    self.wfile.flush()
                    server.release.wait(30)
                    return
                drop = behaviour == "drop" or (behaviour == "drop-once" and
                                               not server.dropped.get(key))
                if drop:
                    server.dropped[key] = True
                    self.wfile.write(data[start:len(data) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.dropped: dict[str, bool] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
