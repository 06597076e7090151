"""``PooledRequestHandler``: a stdlib ``BaseHTTPRequestHandler`` that answers one request the dispatcher of
``engine.query.http_pool`` has already buffered, on one of its workers."""

from __future__ import annotations

import io
import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from engine.query.http_wire import Connection, SocketWriter, log_line, printable

if TYPE_CHECKING:
    from engine.query.http_pool import PooledHTTPServer


class PooledRequestHandler(BaseHTTPRequestHandler):
    """A BaseHTTPRequestHandler that answers one buffered request on a worker of ``PooledHTTPServer``.

    Subclasses implement ``do_GET`` etc. as usual; every error status the stdlib makes (400, 414, 431, 501, ...)
    is JSON here, and the access log is one timestamped line per request."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # answers always carry a status line and headers (no HTTP/0.9)
    server_version = "rs-engine"
    sys_version = ""

    def __init__(self, raw: bytes, connection: Connection, server: "PooledHTTPServer", last: bool) -> None:
        self.raw = raw
        self.pooled = connection
        self.last_on_connection = last
        self.status_sent: int | None = None
        self.started = time.perf_counter()
        super().__init__(connection.sock, connection.address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self.raw)
        self.wfile = SocketWriter(self.request, self.pooled)

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()
        if self.last_on_connection:
            self.close_connection = True

    def finish(self) -> None:  # send what is left; the socket stays open for keep-alive
        self.wfile.flush()

    def handle_expect_100(self) -> bool:
        return True  # the dispatcher sent "100 Continue" already (or the body is here)

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        self.status_sent = code
        if self.last_on_connection or self.pooled.must_close:
            self.send_header("Connection", "close")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (bad request line, unknown method, ...) as JSON, and the connection closed."""
        try:
            short, _ = self.responses[code]
        except KeyError:
            short = "error"
        body = json.dumps({"error": message or short}).encode("utf-8")
        self.close_connection = True
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
            self.wfile.write(body)

    def log_request(self, code="-", size="-") -> None:  # arguments unused: logged once, when the answer is sent
        pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 -- the stdlib's signature
        log_line(f"{self.client_address[0]} {format % args}")

    def log_access(self) -> None:
        line = getattr(self, "requestline", "") or "(no request line)"
        elapsed = (time.perf_counter() - self.started) * 1000
        log_line(f"{self.client_address[0]} \"{printable(line)}\" {self.status_sent or '-'} "
                 f"{self.wfile.sent} {elapsed:.1f}ms")
