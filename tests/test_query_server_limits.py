"""A server that holds: idle and slow clients cannot take its workers, every limit answers JSON, the log is
timestamped, disconnects are one line, bind errors come before the model loads, and tokens guard it."""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine.cli import main
from query_fixtures import build_query_index
from server_fakes import FakeEngine

pytest.importorskip("faiss")
TOKEN = "t0ken-for-tests-0123456789"


def start(engine, **limits):
    from engine.query.http_pool import ServerLimits
    from engine.query.server import serve_in_thread

    token = limits.pop("token", None)
    server, thread = serve_in_thread(engine, token=token, limits=ServerLimits(**limits) if limits else None)
    return server, thread


def stop(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture()
def fake():
    engine = FakeEngine()
    server, thread = start(engine, workers=2, idle_timeout_s=1.0, request_timeout_s=1.0, max_connections=12,
                           max_queue=2)
    yield server.server_address[1], engine, server
    stop(server, thread)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 5.0):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return response.status, response.getheader("Content-Type", ""), data
    finally:
        connection.close()


def timed_health(port: int, timeout: float = 1.0) -> float:
    began = time.perf_counter()
    status, _, data = request(port, "GET", "/healthz", timeout=timeout)
    assert status == 200 and json.loads(data)["status"] == "ok"
    return time.perf_counter() - began


def raw_exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, answer
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory):
    from engine.query.engine import QueryEngine
    from engine.query.server import WORKER_THREADS, serve_in_thread

    index_dir, _, _ = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    engine = QueryEngine(index_dir, device="cpu")
    server, thread = serve_in_thread(engine)
    yield server.server_address[1], WORKER_THREADS
    stop(server, thread)
    engine.close()


def test_idle_and_keep_alive_connections_do_not_take_the_workers(real) -> None:
    """More idle sockets and parked keep-alive clients than workers: /healthz still answers within 1 s."""
    port, workers = real
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2 * workers)]
    parked = []
    for _ in range(workers):  # keep-alive clients that made one request and keep the connection open
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/query?q=river&k=1")
        assert connection.getresponse().read()
        parked.append(connection)
    slow = socket.create_connection(("127.0.0.1", port))  # a body that never comes
    slow.sendall(b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    try:
        for _ in range(3):
            assert timed_health(port) < 1.0
        status, _, data = request(port, "GET", "/query?q=farm&k=2", timeout=5)
        assert status == 200 and len(json.loads(data)["results"]) == 2
    finally:
        for sock in (*idle, slow):
            sock.close()
        for connection in parked:
            connection.close()


def test_incomplete_request_gets_408_and_idle_keep_alive_is_closed(fake) -> None:
    port = fake[0]
    began = time.perf_counter()
    answer = raw_exchange(port, b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
    status, payload = status_and_json(answer)
    assert status == 408 and "not complete" in payload["error"] and time.perf_counter() - began < 3
    answer = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # head never finished (slowloris)
    assert status_and_json(answer)[0] == 408
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # keep-alive: closed when idle
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        began = time.perf_counter()
        assert sock.recv(65536) == b"" and 0.5 < time.perf_counter() - began < 3


def test_too_many_connections_and_a_full_queue_get_503(fake) -> None:
    port, engine, server = fake
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    try:
        deadline = time.time() + 5
        while server.open_connections < 12 and time.time() < deadline:
            time.sleep(0.01)
        status, payload = status_and_json(raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        assert status == 503 and "too many open connections" in payload["error"]
    finally:
        for sock in idle:
            sock.close()
    engine.delay = 0.5  # 2 workers busy, 2 waiting: the fifth concurrent request is refused at once
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(request(port, "GET", "/query?q=x")[0]))
               for _ in range(6)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(statuses).count(200) >= 4 and 503 in statuses


@pytest.mark.parametrize(("payload", "expected"), [
    (b"PUT /query HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 501),
    (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"POST /query HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n12345", 400),
    (b"POST /query HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n0\r\n\r\n", 411),
])
def test_every_error_status_is_json(fake, payload: bytes, expected: int) -> None:
    status, body = status_and_json(raw_exchange(fake[0], payload))
    assert status == expected and body["error"]


def test_access_log_is_timestamped_and_a_vanished_client_is_one_line(fake, capsys) -> None:
    port, engine, _ = fake
    timed_health(port)
    engine.delay = 0.3
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    sock.sendall(b"GET /query?q=" + b"x" * 10 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.close()
    time.sleep(0.8)
    err = capsys.readouterr().err
    assert re.search(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1 "GET /healthz HTTP/1\.1" 200 \d+ '
                     r'[\d.]+ms$', err, re.M), err
    assert "Traceback" not in err and "BrokenPipe" not in err.replace("(BrokenPipeError)", "")


def test_pipelined_requests_and_keep_alive_limit(fake) -> None:
    port = fake[0]
    answer = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200") == 2
    from engine.query.http_pool import ServerLimits  # noqa: F401 -- limits are per server

    server, thread = start(FakeEngine(), max_requests_per_connection=2)
    try:
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert data.count(b"HTTP/1.1 200") == 2 and b"Connection: close" in data
    finally:
        stop(server, thread)


def test_bearer_token(fake) -> None:
    server, thread = start(FakeEngine(), token=TOKEN)
    port = server.server_address[1]
    try:
        assert request(port, "GET", "/healthz")[0] == 200  # open for load balancers
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            status, kind, data = request(port, "GET", "/query?q=river", headers=headers)
            assert status == 401 and kind == "application/json" and "bearer token" in json.loads(data)["error"]
        status, _, _ = request(port, "GET", "/query?q=river", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        status, _, _ = request(port, "POST", "/query", json.dumps({"q": "x"}).encode(),
                               {"Content-Type": "application/json", "Authorization": "Bearer nope"})
        assert status == 401
    finally:
        stop(server, thread)


@pytest.mark.parametrize(("host", "token", "insecure", "refused"), [
    ("127.0.0.1", None, False, False),
    ("localhost", None, False, False),
    ("::1", None, False, False),
    ("0.0.0.0", None, False, True),
    ("::", None, False, True),
    ("192.168.1.20", None, False, True),
    ("0.0.0.0", TOKEN, False, False),
    ("0.0.0.0", None, True, False),
    ("127.0.0.1", "short", False, True),
])
def test_exposure_rules(host: str, token: str | None, insecure: bool, refused: bool) -> None:
    from engine.errors import ConfigError
    from engine.query.access import check_exposure

    if refused:
        with pytest.raises(ConfigError):
            check_exposure(host, token, insecure)
    else:
        check_exposure(host, token, insecure)


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if `engine serve` gets as far as loading a model."""
    import engine.query.engine as engine_module

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bind error was reported")

    monkeypatch.setattr(engine_module.QueryEngine, "__init__", refuse)


def serve_error(capsys, *argv: str) -> str:
    began = time.perf_counter()
    code = main(["serve", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert time.perf_counter() - began < 5
    return lines[0]


def test_serve_reports_bind_errors_at_once_before_loading(tmp_path_factory, tmp_path: Path, capsys,
                                                         no_model_load) -> None:
    index = build_query_index(tmp_path_factory.getbasetemp() / "query-index")[0]
    capsys.readouterr()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = str(busy.getsockname()[1])
    try:
        assert "Address already in use" in serve_error(capsys, "--index", str(index), "--port", port)
    finally:
        busy.close()
    assert "--port 70000: expected 0..65535" in serve_error(capsys, "--index", str(index), "--port", "70000")
    assert "--host no-such-host.invalid" in serve_error(capsys, "--index", str(index), "--host",
                                                         "no-such-host.invalid", "--port", "0", "--insecure")
    line = serve_error(capsys, "--index", str(index), "--host", "0.0.0.0", "--port", "0")
    assert "--token" in line and "--insecure" in line
    assert "index folder not found" in serve_error(capsys, "--index", str(tmp_path / "nope"), "--port", "0")


def test_health_check_jumps_the_queue_under_load(fake) -> None:
    """20 slow searches queued on 2 workers take ~3 s to drain; /healthz waits only for the next free worker."""
    port, engine, _ = fake
    engine.delay = 0.3
    from engine.query.http_pool import ServerLimits  # noqa: F401

    server, thread = start(engine, workers=2, max_queue=64)
    port = server.server_address[1]
    try:
        threads = [threading.Thread(target=request, args=(port, "GET", f"/query?q=x{n}"), kwargs={"timeout": 30})
                   for n in range(20)]
        for client in threads:
            client.start()
        time.sleep(0.3)  # the searches are queued
        assert timed_health(port, timeout=5) < 1.0
        for client in threads:
            client.join(timeout=30)
    finally:
        stop(server, thread)
