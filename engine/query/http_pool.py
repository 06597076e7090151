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
JSON ``{"error": ...}``, like the handler's own; an unexpected exception while reading or answering one
connection is one log line and a 500 for that client, never the end of the dispatcher or a worker. Each request
produces one access-log line on stderr with a UTC timestamp, client, request line, status, bytes and
milliseconds; a client that disconnects early is one log line, never a traceback.

The strict request framing is ``engine.query.http_guard``, the socket helpers ``engine.query.http_wire``; the
handler base class that runs on a worker is ``engine.query.http_handler.PooledRequestHandler``.
"""

from __future__ import annotations

import itertools
import queue
import selectors
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from engine.query.http_guard import frame_head
from engine.query.http_wire import (Connection, close_quietly, drain, json_response, listen, log_line, printable,
                                    send_quietly)

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


_RECV_BYTES = 65536
_POLL_S = 0.5
_LINGER_S = 1.0  # how long a refused connection is drained so the client reads the answer, not a reset
_STOP_PRIORITY = 2  # worker sentinels sort after every request


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
        self.listener = listen(address, self.limits.max_connections)
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
        self._returned: deque[Connection] = deque()
        self._lock = threading.Lock()
        self._waiting = 0  # complete requests submitted to the pool and not started yet
        self._open: set[Connection] = set()  # every client connection, owned by dispatcher or worker
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
                try:
                    self._loop_once()
                except Exception as error:  # noqa: BLE001 -- last line of defence: the loop must go on
                    log_line(f"dispatcher error: {type(error).__name__}: {printable(str(error))}")
                    time.sleep(0.01)
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
            close_quietly(connection.sock)
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
                     if isinstance(key.data, Connection)]
        timeout = max(0.0, min([_POLL_S, *(deadline - now for deadline in deadlines)]))
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._accept()
            elif key.data == "wake":
                drain(self._wake_read)
            else:
                self._guarded(key.data, self._read)
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
            connection = Connection(sock, address)
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

    def _read(self, connection: Connection) -> None:
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

    def _dispatch_if_complete(self, connection: Connection) -> bool:
        """Hand a complete buffered request to a worker; answer malformed or unanswerable ones here."""
        buffer = connection.buffer
        while buffer[:2] == b"\r\n":  # stray empty lines between requests (CRLF only: http_guard)
            del buffer[:2]
        if not buffer:
            return False
        head = frame_head(buffer, self.limits.max_body_bytes)
        if head.problem:
            self._refuse(connection, 400, head.problem)
            return False
        if head.end < 0 or head.end > self.limits.max_head_bytes:
            if head.end > self.limits.max_head_bytes or len(buffer) > self.limits.max_head_bytes:
                self._refuse(connection, 431, f"request head over {self.limits.max_head_bytes} bytes")
            return False
        if len(buffer) < head.end + head.body:
            if head.expects_continue and not connection.continued:
                connection.continued = True
                send_quietly(connection.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
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

    def _guarded(self, connection: Connection, step) -> bool:
        """``step(connection)``; an unexpected exception ends this connection only (one log line, a 500 when
        the socket still takes it), never the dispatcher and with it the whole server."""
        try:
            return bool(step(connection))
        except Exception as error:  # noqa: BLE001 -- one connection's bug must not stop the server
            log_line(f"{connection.client} internal error while reading the request: "
                     f"{type(error).__name__}: {printable(str(error))}")
            try:
                self._refuse(connection, 500, f"internal error ({type(error).__name__})")
            except Exception:  # noqa: BLE001 -- the socket is gone or unusable: just drop it
                self._forget(connection)
            return False

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
                if self._guarded(connection, self._dispatch_if_complete):
                    continue
                if connection.closing:
                    continue  # refused above (and being drained)
            else:
                connection.deadline = time.monotonic() + self.limits.idle_timeout_s
            self.selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _expire(self, now: float) -> None:
        for key in list(self.selector.get_map().values()):
            connection = key.data
            if not isinstance(connection, Connection) or connection.deadline > now:
                continue
            if connection.closing or not connection.buffer:
                self._forget(connection)  # drained long enough, or an idle keep-alive connection: close
            else:
                self._refuse(connection, 408, f"request not complete within {self.limits.request_timeout_s:g} s")

    def _refuse(self, connection: Connection, status: int, message: str, headers: dict | None = None,
                request: bytes = b"") -> None:
        """Answer ``status`` from the dispatcher (never blocks: best effort), half-close, and drain the input
        for a moment: closing a socket with unread input sends a reset that can destroy the answer."""
        send_quietly(connection.sock, json_response(status, message, extra_headers=headers))
        line = bytes(request or connection.buffer).split(b"\n", 1)[0].decode("latin-1").strip()
        log_line(f"{connection.client} \"{printable(line) or '(no request line)'}\" {status} - {message}")
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

    def _forget(self, connection: Connection) -> None:
        if connection.sock.fileno() >= 0 and connection.sock in self.selector.get_map():
            self.selector.unregister(connection.sock)
        with self._lock:
            self._open.discard(connection)
            if connection.closing:
                connection.closing = False
                self._lingering -= 1
        close_quietly(connection.sock)

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
            try:
                self._work(connection, raw)
            except Exception as error:  # noqa: BLE001 -- a worker thread must outlive any one request
                log_line(f"{connection.client} worker error: {type(error).__name__}: {printable(str(error))}")
                with self._lock:
                    self._open.discard(connection)
                close_quietly(connection.sock)

    def _work(self, connection: Connection, raw: bytes) -> None:
        with self._lock:
            self._waiting -= 1
        connection.served += 1
        last = connection.served >= self.limits.max_requests_per_connection
        handler = None
        keep = False
        answered = connection.answered
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
        except Exception as error:  # noqa: BLE001 -- a server reports a bug and keeps serving
            log_line(f"{connection.client} internal error: {type(error).__name__}: {printable(str(error))}")
            if connection.answered == answered:  # nothing sent yet: the client still gets a JSON answer
                send_quietly(connection.sock, json_response(500, f"internal error ({type(error).__name__})"))
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
            close_quietly(connection.sock)
