"""The warm server on loopback: routes, JSON errors (4xx), upload limits and concurrent clients."""

from __future__ import annotations

import http.client
import json
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from query_fixtures import build_query_index

pytest.importorskip("faiss")
CLIENTS, REQUESTS_EACH = 6, 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from engine.query.engine import QueryEngine
    from engine.query.server import serve_in_thread

    index_dir, _, data_dir = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    engine = QueryEngine(index_dir, device="cpu", text_encoder="auto")  # as `engine serve`
    assert engine.text_query_encoder is not None
    running, thread = serve_in_thread(engine)
    yield running.server_address[1], data_dir, engine
    running.shutdown()
    running.server_close()
    thread.join(timeout=10)
    engine.close()


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(data) if kind.startswith("application/json") else data.decode()
    finally:
        connection.close()


def test_health_query_and_gallery(server) -> None:
    port = server[0]
    status, health = call(port, "GET", "/healthz")
    assert status == 200 and health["images"] == 16
    status, result = call(port, "GET", "/query?q=river+tile&k=3&where=class%20%3D%20%27river%27")
    assert status == 200 and len(result["results"]) == 3 and {h["label"] for h in result["results"]} == {"river"}
    status, page = call(port, "GET", "/?q=farm&k=2")
    assert status == 200 and page.count("data:image/jpeg;base64,") == 2 and "<form" in page


def test_post_json_raw_image_and_multipart(server) -> None:
    port, data_dir, _ = server
    status, result = call(port, "POST", "/query", json.dumps({"q": "farm", "k": 2}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 200 and len(result["results"]) == 2
    image = (data_dir / "images" / "tile_007.png").read_bytes()
    status, result = call(port, "POST", "/query?k=1", image, {"Content-Type": "image/png"})
    assert status == 200 and result["results"][0]["image_id"] == 107
    boundary = "rsengineboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"t.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    status, result = call(port, "POST", "/query?k=1&rerank=aas&rerank_depth=4", body,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and result["results"][0]["image_id"] == 107 and result["rerank"] == "aas"


@pytest.mark.parametrize(("method", "path", "body", "headers", "expected"), [
    ("POST", "/query", b"{not json", {"Content-Type": "application/json"}, 400),
    ("POST", "/query", b"[1, 2]", {"Content-Type": "application/json"}, 400),
    ("GET", "/query?q=tile&k=0", None, {}, 400),
    ("GET", "/query?q=tile&k=abc", None, {}, 400),
    ("GET", "/query?q=tile&k=100000", None, {}, 400),
    ("GET", "/query?q=%20%20", None, {}, 400),
    ("GET", "/query?q=tile&where=nope%20%3D%201", None, {}, 400),
    ("GET", "/query?q=tile&colour=red", None, {}, 400),
    ("POST", "/query", b"not an image at all", {"Content-Type": "image/png"}, 400),
    ("POST", "/query", b"x", {"Content-Type": "text/plain"}, 415),
    ("GET", "/nowhere", None, {}, 404),
])
def test_bad_requests_get_json_4xx(server, method, path, body, headers, expected) -> None:
    status, payload = call(server[0], method, path, body, headers)
    assert status == expected and isinstance(payload, dict) and payload["error"]


def test_oversize_upload_is_refused_before_reading(server) -> None:
    from engine.query.server import MAX_BODY_BYTES

    connection = http.client.HTTPConnection("127.0.0.1", server[0], timeout=30)
    connection.putrequest("POST", "/query")
    connection.putheader("Content-Type", "image/png")
    connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    connection.close()


def test_concurrent_clients_get_consistent_answers(server) -> None:
    port = server[0]
    _, expected = call(port, "GET", "/query?q=river&k=5")
    failures: list[str] = []

    def client(number: int) -> None:
        for attempt in range(REQUESTS_EACH):
            where = "&where=split%20%3D%20%27train%27" if (number + attempt) % 2 else ""
            status, result = call(port, "GET", f"/query?q=river&k=5{where}")
            if status != 200:
                failures.append(f"{status}: {result}")
            elif not where and [h["image_id"] for h in result["results"]] != [h["image_id"] for h in
                                                                              expected["results"]]:
                failures.append("different results for the same query")

    threads = [threading.Thread(target=client, args=(number,)) for number in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and not any(thread.is_alive() for thread in threads)


def test_all_model_work_runs_on_one_thread(server, monkeypatch) -> None:
    """Torch calls from several threads keep several OpenMP pools spinning (see engine.query.engine)."""
    port, _, engine = server
    seen: set[int] = set()
    original = engine.text_query_encoder  # what a text query runs (traced, as in `engine serve`)

    def recording(*args, **kwargs):
        seen.add(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "text_query_encoder", recording)
    threads = [threading.Thread(target=call, args=(port, "GET", f"/query?q=river+{n}&k=3")) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert seen == {engine._model_thread_id} and threading.get_ident() not in seen
    # re-entrant: model-thread code that calls run_model again does not deadlock
    assert engine.run_model(lambda: engine.run_model(threading.get_ident)) == engine._model_thread_id
