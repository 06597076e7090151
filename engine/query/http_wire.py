"""Bytes and sockets under ``engine.query.http_pool``: the request-head framing the dispatcher reads, answers
made outside a handler, the buffered writer a handler answers through, and the one-line access log.

Nothing here knows about threads or queues (``http_pool``) or about the handler's HTTP semantics
(``http_handler``).
"""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from dataclasses import dataclass
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

    __slots__ = ("sock", "address", "buffer", "deadline", "served", "must_close", "continued", "closing")

    def __init__(self, sock: socket.socket, address) -> None:
        self.sock = sock
        self.address = address
        self.buffer = bytearray()
        self.deadline = 0.0
        self.served = 0
        self.must_close = False  # the rest of the stream cannot be trusted (unread body, chunked upload)
        self.continued = False  # "100 Continue" already sent for the request being read
        self.closing = False  # answered and half-closed: input is drained until EOF or the deadline

    @property
    def client(self) -> str:
        return str(self.address[0]) if isinstance(self.address, tuple) else str(self.address)


@dataclass(frozen=True)
class Head:
    """What the dispatcher needs to know about a buffered request head to find its end."""

    end: int  # offset of the first body byte
    body: int  # declared body length (0 when none)
    oversized: bool = False  # body larger than allowed: the handler answers 413 without it
    must_close: bool = False
    expects_continue: bool = False
    problem: str = ""  # malformed framing: answered 400 by the dispatcher


def find_head_end(buffer: bytearray) -> int:
    """Offset just past the blank line ending a request head, or -1 (CRLF or bare LF line ends)."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    ends = [position + size for position, size in ((crlf, 4), (lf, 2)) if position >= 0]
    return min(ends) if ends else -1


def parse_head(buffer: bytearray, end: int, max_body: int) -> Head:
    lines = bytes(buffer[:end]).decode("latin-1").splitlines()
    lengths, chunked, expects = set(), False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "content-length":
            lengths.add(value)
        elif name == "transfer-encoding":
            chunked = True
        elif name == "expect" and value.lower() == "100-continue":
            expects = True
    if chunked:  # no chunked uploads: the handler answers 411, and the unread chunks end the connection
        return Head(end=end, body=0, must_close=True)
    if len(lengths) > 1:
        return Head(end=end, body=0, problem="conflicting Content-Length headers")
    if not lengths:
        return Head(end=end, body=0)
    value = lengths.pop()
    if not value.isdigit():
        return Head(end=end, body=0, problem=f"bad Content-Length {value[:40]!r}")
    size = int(value)
    if size > max_body:
        return Head(end=end, body=0, oversized=True, must_close=True)
    return Head(end=end, body=size, expects_continue=expects)


def printable(text: str) -> str:
    cleaned = "".join(character if character.isprintable() else "?" for character in text)
    return cleaned if len(cleaned) <= 300 else cleaned[:297] + "..."


class SocketWriter(io.RawIOBase):
    """``wfile``: collects an answer and sends it in one ``sendall`` on ``flush()`` (head and body in one
    segment: two small writes on a keep-alive socket can wait for a delayed ACK). The socket has the server's
    write timeout."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
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
