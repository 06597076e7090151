"""Bytes and sockets under ``engine.query.http_pool``: answers made outside a handler, the buffered writer a
handler answers through, and the one-line access log (the request framing is ``engine.query.http_guard``).

Nothing here knows about threads or queues (``http_pool``) or about the handler's HTTP semantics
(``http_handler``).
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from datetime import datetime, timezone
from http import HTTPStatus

from engine.errors import EngineError

_LOG_LOCK = threading.Lock()


def log_line(text: str) -> None:
    """One timestamped line on stderr (whole lines only, from any thread)."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    with _LOG_LOCK:
        sys.stderr.write(f"{stamp} {text}\n")
        sys.stderr.flush()


def json_response(status: int, message: str, close: bool = True, extra_headers: dict | None = None) -> bytes:
    """A complete HTTP/1.1 answer with a JSON error body (for answers made outside a handler)."""
    body = json.dumps({"error": message}).encode("utf-8")
    reason = HTTPStatus(status).phrase
    headers = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    headers += [f"{name}: {value}" for name, value in (extra_headers or {}).items()]
    if close:
        headers.append("Connection: close")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """A client socket while the dispatcher owns it: bytes read so far and when it must give up waiting."""

    __slots__ = ("sock", "address", "buffer", "deadline", "served", "must_close", "continued", "closing", "answered")

    def __init__(self, sock: socket.socket, address) -> None:
        self.sock = sock
        self.address = address
        self.buffer = bytearray()
        self.deadline = 0.0
        self.served = 0
        self.must_close = False  # the rest of the stream cannot be trusted (unread body, chunked upload)
        self.continued = False  # "100 Continue" already sent for the request being read
        self.closing = False  # answered and half-closed: input is drained until EOF or the deadline
        self.answered = 0  # bytes of answers sent on this connection by handlers

    @property
    def client(self) -> str:
        return str(self.address[0]) if isinstance(self.address, tuple) else str(self.address)


def printable(text: str) -> str:
    cleaned = "".join(character if character.isprintable() else "?" for character in text)
    return cleaned if len(cleaned) <= 300 else cleaned[:297] + "..."


class SocketWriter(io.RawIOBase):
    """``wfile``: collects an answer and sends it in one ``sendall`` on ``flush()`` (head and body in one
    segment: two small writes on a keep-alive socket can wait for a delayed ACK). The socket has the server's
    write timeout."""

    def __init__(self, sock: socket.socket, connection: "Connection | None" = None) -> None:
        super().__init__()
        self.sock = sock
        self.connection = connection
        self.pending = bytearray()
        self.sent = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.pending += data
        return len(data)

    def flush(self) -> None:
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            self.sock.sendall(data)
            self.sent += len(data)
            if self.connection is not None:
                self.connection.answered += len(data)


def listen(address: tuple[str, int], backlog: int) -> socket.socket:
    host, port = address
    if not 0 <= int(port) <= 65535:
        raise EngineError(f"--port {port}: expected 0..65535")
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as error:
        raise EngineError(f"--host {host}: cannot resolve ({error.strerror or error})") from None
    family, kind, protocol, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, protocol)
    try:
        if hasattr(socket, "SO_REUSEADDR"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise EngineError(f"--host {host} --port {port}: cannot listen ({error.strerror or error})") from None
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)
    except OSError:
        pass


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass
