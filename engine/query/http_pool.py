"""An HTTP/1.1 server that idle, slow or vanishing clients cannot freeze (stdlib only).

Why not ``http.server`` as is: a handler thread reads its connection itself, so every open connection holds a
thread. Eight idle sockets (or eight keep-alive clients, or a Content-Length larger than the body) took all
eight workers of the previous server and ``/healthz`` hung until they closed.

Here one dispatcher thread owns every socket through a ``selectors`` loop and reads each request, head and
body, into memory without blocking. Only a *complete* request goes to a worker, which runs the handler on the
buffered bytes and writes the answer (with a write timeout), then hands a keep-alive connection back to the
dispatcher. So an idle connection costs a file descriptor, never a worker. Limits (``ServerLimits``):

* ``idle_timeout_s``: a keep-alive connection with no request under way is closed after this (no answer);
* ``request_timeout_s``: from the first byte of a request to its last byte (head and declared body); a request
  still incomplete then gets 408 and the connection is closed (slowloris, short bodies);
* ``max_connections`` open sockets; one more is answered 503 and closed;
* ``max_queue`` complete requests waiting for a worker; one more is answered 503 (the client may retry).
  Requests for ``priority_paths`` (``/healthz``) go to the head of the queue, so a health check under full
  load waits for the next free worker, not behind every queued search;
* ``max_requests_per_connection``: the last one is answered with ``Connection: close``;
* ``max_head_bytes`` (431), ``max_body_bytes`` (the handler answers 413 without the body being read);
* ``write_timeout_s``: a client that stops reading its answer is dropped.

Every answer the server makes itself (408, 431, 503, 400 for a malformed head, 501 for an unknown method) is
JSON ``{"error": ...}``, like the handler's own. Each request produces one access-log line on stderr with a UTC
timestamp, client, request line, status, bytes and milliseconds; a client that disconnects early is one log
line, never a traceback.
"""

from __future__ import annotations

import io
import itertools
import json
import queue
import selectors
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

from engine.errors import EngineError


@dataclass(frozen=True)
class ServerLimits:
    workers: int = 8
    max_connections: int = 256
    max_queue: int = 64
    idle_timeout_s: float = 15.0
    request_timeout_s: float = 10.0
    write_timeout_s: float = 10.0
    max_requests_per_connection: int = 1000
    max_head_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024 * 1024


_LOG_LOCK = threading.Lock()
_RECV_BYTES = 65536
_POLL_S = 0.5
_LINGER_S = 1.0  # how long a refused connection is drained so the client reads the answer, not a reset
_STOP_PRIORITY = 2  # worker sentinels sort after every request


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


class _Connection:
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
class _Head:
    """What the dispatcher needs to know about a buffered request head to find its end."""

    end: int  # offset of the first body byte
    body: int  # declared body length (0 when none)
    oversized: bool = False  # body larger than allowed: the handler answers 413 without it
    must_close: bool = False
    expects_continue: bool = False
    problem: str = ""  # malformed framing: answered 400 by the dispatcher


def _find_head_end(buffer: bytearray) -> int:
    """Offset just past the blank line ending a request head, or -1 (CRLF or bare LF line ends)."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    ends = [position + size for position, size in ((crlf, 4), (lf, 2)) if position >= 0]
    return min(ends) if ends else -1


def _parse_head(buffer: bytearray, end: int, max_body: int) -> _Head:
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
        return _Head(end=end, body=0, must_close=True)
    if len(lengths) > 1:
        return _Head(end=end, body=0, problem="conflicting Content-Length headers")
    if not lengths:
        return _Head(end=end, body=0)
    value = lengths.pop()
    if not value.isdigit():
        return _Head(end=end, body=0, problem=f"bad Content-Length {value[:40]!r}")
    size = int(value)
    if size > max_body:
        return _Head(end=end, body=0, oversized=True, must_close=True)
    return _Head(end=end, body=size, expects_continue=expects)


class PooledRequestHandler(BaseHTTPRequestHandler):
    """A BaseHTTPRequestHandler that answers one buffered request on a worker of ``PooledHTTPServer``.

    Subclasses implement ``do_GET`` etc. as usual; every error status the stdlib makes (400, 414, 431, 501, ...)
    is JSON here, and the access log is one timestamped line per request."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # answers always carry a status line and headers (no HTTP/0.9)
    server_version = "rs-engine"
    sys_version = ""

    def __init__(self, raw: bytes, connection: _Connection, server: "PooledHTTPServer", last: bool) -> None:
        self.raw = raw
        self.pooled = connection
        self.last_on_connection = last
        self.status_sent: int | None = None
        self.started = time.perf_counter()
        super().__init__(connection.sock, connection.address, server)

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self.raw)
        self.wfile = _SocketWriter(self.request)

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
        log_line(f"{self.client_address[0]} \"{_printable(line)}\" {self.status_sent or '-'} "
                 f"{self.wfile.sent} {elapsed:.1f}ms")


def _printable(text: str) -> str:
    cleaned = "".join(character if character.isprintable() else "?" for character in text)
    return cleaned if len(cleaned) <= 300 else cleaned[:297] + "..."


class _SocketWriter(io.RawIOBase):
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


class PooledHTTPServer:
    """Serve ``handler_class`` (a ``PooledRequestHandler``) on ``address`` until ``shutdown()``.

    The socket is bound and listening when the constructor returns (so a busy port fails at once, before any
    slow start-up work); ``serve_forever()`` runs the dispatcher loop in the calling thread. Workers are
    long-lived threads: a fresh thread per request pays for its own torch/OpenMP team and malloc arena on its
    first query (docs/query.md)."""

    def __init__(self, address: tuple[str, int], handler_class, limits: ServerLimits | None = None,
                 priority_paths: tuple[str, ...] = ()) -> None:
        self.limits = limits or ServerLimits()
        self.handler_class = handler_class
        self.listener = _listen(address, self.limits.max_connections)
        self.server_address = self.listener.getsockname()
        self._priority_lines = tuple(f" {path} ".encode() for path in priority_paths) + \
            tuple(f" {path}?".encode() for path in priority_paths)
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # FIFO within a priority
        self._workers = [threading.Thread(target=self._worker_loop, name=f"engine-serve-{number}", daemon=True)
                         for number in range(self.limits.workers)]
        for worker in self._workers:
            worker.start()
        self.selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._returned: deque[_Connection] = deque()
        self._lock = threading.Lock()
        self._waiting = 0  # complete requests submitted to the pool and not started yet
        self._open: set[_Connection] = set()  # every client connection, owned by dispatcher or worker
        self._lingering = 0  # refused connections being drained (bounded by max_connections too)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()

    # ---- life cycle ----------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        self._stopped.clear()
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                self._loop_once()
        finally:
            for key in list(self.selector.get_map().values()):
                self.selector.unregister(key.fileobj)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the loop and wait for it (from another thread)."""
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self.listener.close()
        for _ in self._workers:  # after the queued work: a worker stops when it takes its sentinel
            self._jobs.put((_STOP_PRIORITY, next(self._order), None, b""))
        for worker in self._workers:
            worker.join()
        with self._lock:
            remaining = list(self._open)
            self._open.clear()
        for connection in remaining:
            _close_quietly(connection.sock)
        self._wake_read.close()
        self._wake_write.close()
        self.selector.close()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    # ---- dispatcher ----------------------------------------------------------------------------------------
    def _loop_once(self) -> None:
        now = time.monotonic()
        deadlines = [key.data.deadline for key in self.selector.get_map().values()
                     if isinstance(key.data, _Connection)]
        timeout = max(0.0, min([_POLL_S, *(deadline - now for deadline in deadlines)]))
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._accept()
            elif key.data == "wake":
                _drain(self._wake_read)
            else:
                self._read(key.data)
        self._take_back()
        self._expire(time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. EMFILE: leave it in the backlog and say why
                log_line(f"accept failed: {error.strerror or error}")
                return
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, address)
            with self._lock:
                full = len(self._open) >= self.limits.max_connections
                if not full:
                    self._open.add(connection)
            if full:
                self._refuse(connection, 503, "server busy: too many open connections; retry shortly",
                             {"Retry-After": "1"})
                continue
            connection.deadline = time.monotonic() + self.limits.idle_timeout_s
            self.selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._forget(connection)
            return
        if connection.closing:
            return  # drained and dropped
        if not connection.buffer:
            connection.deadline = time.monotonic() + self.limits.request_timeout_s
        connection.buffer += data
        self._dispatch_if_complete(connection)

    def _dispatch_if_complete(self, connection: _Connection) -> bool:
        """Hand a complete buffered request to a worker; answer malformed or unanswerable ones here."""
        buffer = connection.buffer
        while buffer[:2] in (b"\r\n",) or buffer[:1] == b"\n":  # stray line ends between requests
            del buffer[:2 if buffer[:2] == b"\r\n" else 1]
        if not buffer:
            return False
        end = _find_head_end(buffer)
        if end < 0:
            if len(buffer) > self.limits.max_head_bytes:
                self._refuse(connection, 431, f"request head over {self.limits.max_head_bytes} bytes")
            return False
        if end > self.limits.max_head_bytes:
            self._refuse(connection, 431, f"request head over {self.limits.max_head_bytes} bytes")
            return False
        head = _parse_head(buffer, end, self.limits.max_body_bytes)
        if head.problem:
            self._refuse(connection, 400, head.problem)
            return False
        if len(buffer) < head.end + head.body:
            if head.expects_continue and not connection.continued:
                connection.continued = True
                _send_quietly(connection.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            return False
        raw = bytes(buffer[:head.end + head.body])
        del buffer[:head.end + head.body]
        connection.must_close = head.must_close
        connection.continued = False
        with self._lock:
            full = self._waiting >= self.limits.max_queue
            if not full:
                self._waiting += 1
        if full:
            self._refuse(connection, 503, "server busy: too many requests waiting; retry shortly",
                         {"Retry-After": "1"}, request=raw)
            return False
        if connection.sock in self.selector.get_map():
            self.selector.unregister(connection.sock)
        first_line = raw.split(b"\n", 1)[0]
        priority = 0 if any(marker in first_line for marker in self._priority_lines) else 1
        self._jobs.put((priority, next(self._order), connection, raw))
        return True

    def _take_back(self) -> None:
        """Re-register keep-alive connections the workers have finished with."""
        while True:
            with self._lock:
                if not self._returned:
                    return
                connection = self._returned.popleft()
            try:
                connection.sock.setblocking(False)
            except OSError:
                self._forget(connection)
                continue
            if connection.buffer:  # a pipelined request came with the last one
                connection.deadline = time.monotonic() + self.limits.request_timeout_s
                if self._dispatch_if_complete(connection):
                    continue
                if connection.closing:
                    continue  # refused above (and being drained)
            else:
                connection.deadline = time.monotonic() + self.limits.idle_timeout_s
            self.selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _expire(self, now: float) -> None:
        for key in list(self.selector.get_map().values()):
            connection = key.data
            if not isinstance(connection, _Connection) or connection.deadline > now:
                continue
            if connection.closing or not connection.buffer:
                self._forget(connection)  # drained long enough, or an idle keep-alive connection: close
            else:
                self._refuse(connection, 408, f"request not complete within {self.limits.request_timeout_s:g} s")

    def _refuse(self, connection: _Connection, status: int, message: str, headers: dict | None = None,
                request: bytes = b"") -> None:
        """Answer ``status`` from the dispatcher (never blocks: best effort), half-close, and drain the input
        for a moment: closing a socket with unread input sends a reset that can destroy the answer."""
        _send_quietly(connection.sock, json_response(status, message, extra_headers=headers))
        line = bytes(request or connection.buffer).split(b"\n", 1)[0].decode("latin-1").strip()
        log_line(f"{connection.client} \"{_printable(line) or '(no request line)'}\" {status} - {message}")
        connection.buffer.clear()
        with self._lock:
            linger = self._lingering < self.limits.max_connections
            if linger:
                self._lingering += 1
                self._open.discard(connection)
        if not linger:
            self._forget(connection)
            return
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        connection.closing = True
        connection.deadline = time.monotonic() + _LINGER_S
        if connection.sock not in self.selector.get_map():
            self.selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _forget(self, connection: _Connection) -> None:
        if connection.sock.fileno() >= 0 and connection.sock in self.selector.get_map():
            self.selector.unregister(connection.sock)
        with self._lock:
            self._open.discard(connection)
            if connection.closing:
                connection.closing = False
                self._lingering -= 1
        _close_quietly(connection.sock)

    def _wake(self) -> None:
        try:
            self._wake_write.send(b"x")
        except OSError:
            pass

    # ---- workers -------------------------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        while True:
            _, _, connection, raw = self._jobs.get()
            if connection is None:
                return
            self._work(connection, raw)

    def _work(self, connection: _Connection, raw: bytes) -> None:
        with self._lock:
            self._waiting -= 1
        connection.served += 1
        last = connection.served >= self.limits.max_requests_per_connection
        handler = None
        keep = False
        try:
            connection.sock.setblocking(True)
            connection.sock.settimeout(self.limits.write_timeout_s)
            handler = self.handler_class(raw, connection, self, last)
            keep = not handler.close_connection and not connection.must_close
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError) as error:
            log_line(f"{connection.client} client disconnected before the answer was sent "
                     f"({type(error).__name__})")
        except OSError as error:
            log_line(f"{connection.client} connection error: {error.strerror or error}")
        except Exception:  # noqa: BLE001 -- a server reports a bug and keeps serving
            log_line(f"{connection.client} internal error:\n{traceback.format_exc().rstrip()}")
        finally:
            if handler is not None:
                handler.log_access()
        if keep and not self._stop.is_set():
            with self._lock:
                self._returned.append(connection)
            self._wake()
        else:
            with self._lock:
                self._open.discard(connection)
            _close_quietly(connection.sock)


def _listen(address: tuple[str, int], backlog: int) -> socket.socket:
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


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)
    except OSError:
        pass


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError, OSError):
        pass
