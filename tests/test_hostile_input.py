"""The ten findings of the hostile-input probe (issue 28), one test each: a malformed header cannot stop the
server, image bombs are refused from their header, a slow filter fails alone, the filter shape check has no
WINDOW gap, framing is strict, multipart and JSON bodies are bounded, CLI mistakes are one line, and control
characters in file names are shown escaped."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from server_fakes import FakeEngine


# ---- a live server over a fake engine ------------------------------------------------------------------------
@pytest.fixture()
def live():
    from engine.query.http_pool import ServerLimits
    from engine.query.server import serve_in_thread

    engine = FakeEngine()
    server, thread = serve_in_thread(engine, limits=ServerLimits(workers=2, idle_timeout_s=2.0,
                                                                 request_timeout_s=2.0))
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes the connection (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


def answers(data: bytes) -> list[tuple[int, dict]]:
    """Every (status, JSON body) in a stream of HTTP answers."""
    found = []
    while data.startswith(b"HTTP/1.1 "):
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        found.append((status, json.loads(rest[:length] or b"{}")))
        data = rest[length:]
    return found


def healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def post(port: int, body: bytes, content_type: str, path: str = "/query") -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# ---- row 1: a Unicode digit in Content-Length -----------------------------------------------------------------
@pytest.mark.parametrize("digit", [b"\xb2", b"\xb9", b"\xb3", b"1\xb2", b"+5", b" 5 5", b"0x10", b"5, 5"])
def test_row1_non_ascii_content_length_is_400_and_the_server_keeps_serving(live, digit: bytes) -> None:
    got = answers(exchange(live, b"GET /healthz HTTP/1.1\r\nContent-Length: " + digit + b"\r\n\r\n"))
    assert len(got) == 1 and got[0][0] == 400, got
    assert healthy(live)


def test_row1_an_exception_while_framing_ends_one_connection_not_the_server(live, monkeypatch, capsys) -> None:
    import engine.query.http_pool as pool

    def broken(buffer, max_body):
        raise RuntimeError("framing bug")

    monkeypatch.setattr(pool, "frame_head", broken)
    got = answers(exchange(live, b"GET /healthz HTTP/1.1\r\n\r\n"))
    assert got == [(500, {"error": "internal error (RuntimeError)"})]
    monkeypatch.undo()
    assert healthy(live)
    err = capsys.readouterr().err
    assert "internal error while reading the request: RuntimeError: framing bug" in err and "Traceback" not in err


# ---- row 5: line ends and separators standard parsers do not share ---------------------------------------------
@pytest.mark.parametrize("separator", [b"\x85", b"\x0b", b"\x0c", b"\x1c", b"\n", b"\r"])
def test_row5_odd_line_separators_are_refused_not_framed_differently(live, separator: bytes) -> None:
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    payload = (b"POST /query HTTP/1.1\r\nHost: x\r\nX-Note: a" + separator + b"Content-Length: "
               + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
    got = answers(exchange(live, payload))
    assert [status for status, _ in got] == [400], got
    assert healthy(live)


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded: value\r\n\r\n",  # obs-fold
    b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n",  # space before the colon
    b"POST /query HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",  # two, even if equal
    b"POST /query HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    b"GET /healthz HTTP/1.1\nHost: x\n\n",  # bare LF line ends
])
def test_row5_other_ambiguous_heads_are_400(live, head: bytes) -> None:
    got = answers(exchange(live, head))
    assert [status for status, _ in got] == [400], got
    assert healthy(live)


# ---- row 6: a multipart body of many tiny parts ---------------------------------------------------------------
def test_row6_multipart_parts_are_bounded_before_parsing(live) -> None:
    boundary = "xyz"
    tiny = b"".join(b"--xyz\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\na\r\n" % n for n in range(5000))
    body = tiny + b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc\r\n--xyz--\r\n"
    began = time.perf_counter()
    status, payload = post(live, body, f"multipart/form-data; boundary={boundary}")
    assert status == 413 and "5001 parts" in payload["error"] and time.perf_counter() - began < 2
    assert healthy(live)


# ---- row 8: JSON a strict parser refuses ------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b'{"q":"river","k":Infinity}', b'{"q":"river","k":NaN}', b'{"q":"river","k":1e400}',
                                  b'{"q":"river","k":' + b"9" * 5000 + b"}", b"[" * 100000,
                                  b'{"q":"\\udcff"}', b'{"q":"river","k":true}', b'{"q":"river","k":2.5}'])
def test_row8_json_errors_are_400_with_one_line(live, body: bytes) -> None:
    status, payload = post(live, body, "application/json")
    assert status == 400 and "\n" not in payload["error"] and "internal" not in payload["error"], payload
    assert healthy(live)
