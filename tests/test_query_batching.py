"""Batched query encoding: the batcher's policy, batched embeddings equal to the single-query path, and the
server's per-stage timings (``Server-Timing``) with batching on."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from query_fixtures import build_query_index

from engine.errors import ConfigError
from engine.query.batching import BatchPolicy, EncodeBatcher

TEXTS = ["river", "a farm tile number 3 view 1", "farm", "a river tile seen from above with fields and a road",
         "river tile number 12 " * 30]


class RecordingEncoders:
    """Encoders that record each call's batch and take ``delay`` seconds, on one model thread."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay, self.calls = delay, []
        self.thread = ThreadPoolExecutor(max_workers=1)

    def text(self, items: list) -> list:
        self.calls.append(("text", list(items)))
        time.sleep(self.delay)
        return [f"t:{item}" for item in items]

    def image(self, items: list) -> list:
        self.calls.append(("image", list(items)))
        time.sleep(self.delay)
        return [f"i:{item}" for item in items]

    def batcher(self, **policy) -> EncodeBatcher:
        return EncodeBatcher(self.thread.submit, {"text": self.text, "image": self.image}, BatchPolicy(**policy))


def run_concurrently(batcher: EncodeBatcher, jobs: list[tuple[str, str]]) -> list:
    results: list = [None] * len(jobs)

    def one(position: int) -> None:
        kind, item = jobs[position]
        try:
            results[position] = batcher.encode(kind, lambda: item)
        except Exception as error:  # noqa: BLE001 -- recorded for the assertion
            results[position] = error

    threads = [threading.Thread(target=one, args=(position,)) for position in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_waiting_queries_share_one_call_and_kinds_never_mix() -> None:
    encoders = RecordingEncoders()
    jobs = [("text", f"q{n}") for n in range(12)] + [("image", f"p{n}") for n in range(5)]
    results = run_concurrently(encoders.batcher(max_batch=8), jobs)
    assert [result.output for result in results] == [f"{kind[0]}:{item}" for kind, item in jobs]
    sizes = [len(items) for _, items in encoders.calls]
    assert sum(sizes) == len(jobs) and max(sizes) <= 8 and len(encoders.calls) < len(jobs)
    assert all({item[0] for item in items} == {"q" if kind == "text" else "p"} for kind, items in encoders.calls)
    for result in results:
        assert result.batch_size >= 1 and result.encode_ms >= 15 and result.queue_ms >= 0


def test_a_lone_query_is_encoded_at_once() -> None:
    encoders = RecordingEncoders(delay=0.0)
    batcher = encoders.batcher(max_batch=32, max_wait_ms=500)
    began = time.perf_counter()
    result = batcher.encode("text", lambda: "alone")
    assert result.output == "t:alone" and result.batch_size == 1
    assert time.perf_counter() - began < 0.25  # nobody else is preparing a query: no 500 ms wait


def test_a_batch_waits_for_a_query_still_being_prepared_but_not_past_the_bound() -> None:
    encoders = RecordingEncoders(delay=0.0)
    batcher = encoders.batcher(max_batch=32, max_wait_ms=300)

    def slow_prepare():
        time.sleep(0.05)
        return "late"

    late: list = []
    thread = threading.Thread(target=lambda: late.append(batcher.encode("text", slow_prepare)))
    thread.start()
    time.sleep(0.01)  # the late request is preparing
    early = batcher.encode("text", lambda: "early")
    thread.join(timeout=10)
    assert early.batch_size == 2 and late[0].batch_size == 2 and encoders.calls == [("text", ["early", "late"])]

    batcher = encoders.batcher(max_batch=32, max_wait_ms=5)
    encoders.calls.clear()
    thread = threading.Thread(target=lambda: batcher.encode("text", lambda: time.sleep(0.3) or "very late"))
    thread.start()
    time.sleep(0.01)
    early = batcher.encode("text", lambda: "early")
    thread.join(timeout=10)
    assert early.batch_size == 1 and early.queue_ms < 200  # the 5 ms bound, not the 300 ms preparation


def test_errors_reach_every_query_of_the_batch_and_preparation_errors_only_their_own() -> None:
    encoders = RecordingEncoders()

    def failing(items):
        raise RuntimeError("encoder broke")

    batcher = EncodeBatcher(encoders.thread.submit, {"text": failing, "image": encoders.image}, BatchPolicy())
    results = run_concurrently(batcher, [("text", "a"), ("text", "b"), ("image", "c")])
    assert [type(result).__name__ for result in results[:2]] == ["RuntimeError", "RuntimeError"]
    assert results[2].output == "i:c"

    def bad_prepare():
        raise ConfigError("bad upload")

    with pytest.raises(ConfigError, match="bad upload"):
        batcher.encode("image", bad_prepare)
    assert batcher.encode("image", lambda: "after").output == "i:after"  # the batcher is not stuck


@pytest.mark.parametrize("lanes", [1, 2])
def test_with_two_lanes_the_next_batch_encodes_while_the_first_still_runs(lanes) -> None:
    encoders = RecordingEncoders(delay=0.3)
    pool = ThreadPoolExecutor(max_workers=lanes)
    batcher = EncodeBatcher({"text": pool.submit, "image": encoders.thread.submit},
                            {"text": encoders.text, "image": encoders.image}, BatchPolicy(max_wait_ms=0))
    first: list = []
    thread = threading.Thread(target=lambda: first.append(batcher.encode("text", lambda: "first")))
    thread.start()
    time.sleep(0.1)  # the first batch is encoding
    second = batcher.encode("text", lambda: "second")
    thread.join(timeout=10)
    pool.shutdown()
    assert first[0].output == "t:first" and second.output == "t:second" and second.batch_size == 1
    if lanes == 2:
        assert second.queue_ms < 150  # a free lane took it at once
    else:
        assert second.queue_ms >= 150  # behind the first batch's 300 ms on the one thread


def test_text_lanes_only_for_onnx_runtime_encoders(monkeypatch) -> None:
    import os
    from types import SimpleNamespace

    from engine.query.engine import text_lane_count

    onnx, torch_graph = SimpleNamespace(kind="onnx"), SimpleNamespace(kind="float32")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert text_lane_count(BatchPolicy(), onnx, onnx) == 3  # one per core
    assert text_lane_count(BatchPolicy(text_lanes=5), onnx, onnx) == 5
    assert text_lane_count(BatchPolicy(text_lanes=5), torch_graph, onnx) == 1  # torch stays on the model thread
    assert text_lane_count(BatchPolicy(), onnx, None) == 1


def test_a_closed_model_thread_fails_queries_instead_of_hanging() -> None:
    encoders = RecordingEncoders()
    batcher = encoders.batcher()
    encoders.thread.shutdown()
    with pytest.raises(RuntimeError):
        batcher.encode("text", lambda: "late")


@pytest.mark.parametrize("policy, message", [({"max_batch": 0}, "--batch-max"),
                                             ({"max_wait_ms": -1}, "--batch-wait-ms"),
                                             ({"text_lanes": 65}, "--batch-text-lanes")])
def test_bad_policies_are_one_line_errors(policy, message) -> None:
    with pytest.raises(ConfigError, match=message):
        BatchPolicy(**policy).validate()


# ---- the real engine ---------------------------------------------------------------------------------------
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory):
    from engine.query.engine import QueryEngine

    index_dir, _, data_dir = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    batched = QueryEngine(index_dir, device="cpu", text_encoder="onnx", batch=BatchPolicy())
    single = QueryEngine(index_dir, device="cpu", text_encoder="onnx")
    yield batched, single, data_dir
    batched.close()
    single.close()


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first * second).sum(-1) / np.linalg.norm(first, axis=-1) / np.linalg.norm(second, axis=-1)


def test_batched_text_embeddings_equal_the_single_query_path(engines) -> None:
    batched, single, _ = engines
    assert batched.batch_text_encoder is not None and batched.batch_text_encoder.kind == "onnx"
    rows = batched.run_model(batched._encode_text_batch, TEXTS)
    alone = np.stack([single.encode_text(text, []) for text in TEXTS])
    assert cosines(np.stack([vector for vector, _ in rows]), alone).min() >= 0.9999
    notes = [notes for _, notes in rows]
    assert notes[-1] and "truncated" in notes[-1][0] and not any(notes[:-1])  # per query, as when alone


def test_batched_image_embeddings_equal_the_single_query_path(engines) -> None:
    from engine.data.images import load_rgb

    batched, single, data_dir = engines
    images = [load_rgb(path) for path in sorted((data_dir / "images").glob("*.png"))[:5]]
    rows = batched.run_model(batched._encode_image_batch, images)
    alone = np.stack([single.encode_pixels(single.transform(image).unsqueeze(0))[0] for image in images])
    assert cosines(np.stack([vector for vector, _ in rows]), alone).min() >= 0.9999


def test_batched_searches_answer_like_unbatched_ones(engines) -> None:
    from engine.query.request import QueryRequest

    batched, single, data_dir = engines
    image = str(sorted((data_dir / "images").glob("*.png"))[3])
    requests = [QueryRequest(text=text, k=5) for text in TEXTS] + [
        QueryRequest(text="river", k=4, where="split = 'train'"), QueryRequest(image_path=image, k=3),
        QueryRequest(text="farm", k=3, rerank="aas", rerank_depth=6)]
    seen: dict[str, set[str]] = {"text": set(), "image": set()}
    batch_encoder, single_encoder = batched.batch_text_encoder.encode_batch, batched.text_query_encoder
    image_encoder = batched.batcher._encoders["image"]

    def recording(encode, kind):
        def run(batch):
            seen[kind].add(threading.current_thread().name.split("_")[0])
            return encode(batch)
        return run

    batched.batch_text_encoder.encode_batch = recording(batch_encoder, "text")
    batched.text_query_encoder = recording(single_encoder, "text")
    batched.batcher._encoders["image"] = recording(image_encoder, "image")
    try:
        with ThreadPoolExecutor(max_workers=len(requests)) as pool:
            answers = list(pool.map(batched.search, requests))
    finally:
        del batched.batch_text_encoder.encode_batch
        batched.text_query_encoder = single_encoder
        batched.batcher._encoders["image"] = image_encoder
    # ONNX text batches run on the text lanes (the model thread when there is one lane), torch on the model
    # thread, never on a request's thread
    assert seen["text"] == {"engine-text" if batched.text_lanes > 1 else "engine-model"}
    assert seen["image"] == {"engine-model"}
    for request, answer in zip(requests, answers):
        expected = single.search(request)
        assert [hit.image_id for hit in answer.hits] == [hit.image_id for hit in expected.hits]
        assert np.allclose([hit.score for hit in answer.hits], [hit.score for hit in expected.hits], atol=1e-4)
        assert answer.encode_batch >= 1 and {"queue", "encode", "search", "total"} <= set(answer.timings_ms)
        assert answer.notes == expected.notes


def test_server_reports_where_the_time_goes(engines) -> None:
    from engine.query.server import serve_in_thread

    batched, _, _ = engines
    running, thread = serve_in_thread(batched)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", running.server_address[1], timeout=60)
        connection.request("GET", "/query?q=river&k=3")
        response = connection.getresponse()
        response.read()
        timing = response.getheader("Server-Timing")
        image = sorted((engines[2] / "images").glob("*.png"))[2].read_bytes()
        connection.request("POST", "/query?k=2", body=image, headers={"Content-Type": "image/png"})
        uploaded = connection.getresponse()
        answer = json.loads(uploaded.read())
        image_timing = uploaded.getheader("Server-Timing")
        connection.close()
    finally:
        running.shutdown()
        running.server_close()
        thread.join(timeout=10)
    assert response.status == 200
    stages = {part.split(";")[0].strip() for part in timing.split(",")}
    assert {"queue", "encode", "search", "total", "serialise", "handler"} <= stages
    assert 'desc="batch 1"' in timing
    assert uploaded.status == 200 and len(answer["results"]) == 2 and answer["encode_batch"] == 1
    assert "decode;dur=" in image_timing and answer["results"][0]["path"].endswith("tile_002.png")


@pytest.mark.parametrize("flags, message", [(["--batch", "maybe"], "--batch must be on or off"),
                                            (["--batch-max", "0"], "--batch-max must be within"),
                                            (["--batch-wait-ms", "5000"], "--batch-wait-ms must be within"),
                                            (["--batch-text-lanes", "-1"], "--batch-text-lanes must be within")])
def test_serve_batch_flags_are_checked_before_anything_slow(flags, message, capsys) -> None:
    from engine.cli import main

    assert main(["serve", "--port", "0", *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
