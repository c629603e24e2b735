"""A real HTTP server on 127.0.0.1 for the model manager's tests (http.server in a thread).

It serves files from a folder with ``Range: bytes=N-`` support (206 + Content-Range), and can
misbehave on purpose: drop the connection after some bytes (once or always), ignore ranges,
refuse with a status, or serve other bytes than asked for.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Behaviour:
    """How the server answers; tests change it between requests.

    Attributes:
        drop_after: Close the connection after sending this many body bytes (None: never).
        drops_left: How many responses drop before the server behaves (-1: all).
        ignore_range: Answer 200 with the whole file even when a range is asked.
        status: Answer every request with this HTTP status and no body (None: serve).
        replace: Serve these bytes instead of the file's.
        delay_s: Pause after each 64 KiB sent (a slow network, for cancelling mid-download).
        requests: What was asked: (path, Range header or None), one per request.
    """

    drop_after: int | None = None
    drops_left: int = -1
    ignore_range: bool = False
    status: int | None = None
    replace: bytes | None = None
    delay_s: float = 0.0
    requests: list = field(default_factory=list)


class FileServer:
    """``with FileServer(folder) as server: server.url("file.zip")``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.behaviour = Behaviour()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer._answer(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def url(self, name: str) -> str:
        """The URL of a file in the folder."""
        return self.base_url + name

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        b = self.behaviour
        asked = handler.headers.get("Range")
        b.requests.append((handler.path, asked))
        if b.status is not None:
            handler.send_response(b.status)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        # a proxy request names the whole URL ("GET http://host/file"): serve its path, as a proxy would
        path = self.folder / urllib.parse.urlsplit(handler.path).path.lstrip("/")
        if not path.is_file():
            handler.send_error(404)
            return
        data = b.replace if b.replace is not None else path.read_bytes()
        start = 0
        if asked and not b.ignore_range:
            start = int(asked.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        body = data[start:]
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        if b.drop_after is not None and b.drops_left != 0:
            b.drops_left -= 1 if b.drops_left > 0 else 0
            handler.wfile.write(body[:b.drop_after])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)  # the client sees the connection end mid-body
            return
        step = 1 << 16
        try:
            for start in range(0, len(body), step):
                handler.wfile.write(body[start:start + step])
                if b.delay_s:
                    time.sleep(b.delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancelled download)
