"""bench/load_soak.py at toy scale: phases of concurrent clients against the real server code (in-process, with
a stand-in engine, so the suite does not pay for a second model load), every column filled."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not an installed package
sys.path.insert(0, str(Path(__file__).parent))

from bench import load_soak
from server_fakes import FakeEngine


class InProcess:
    def __init__(self, port: int) -> None:
        self.port, self.pid = port, os.getpid()


class Hits(FakeEngine):
    def search(self, request):
        from engine.query.request import Hit

        result = super().search(request)
        result.hits.append(Hit(1, 0.5, 0.5, 1, "a.png", "test", "farm", ["a farm"]))
        return result


def test_phases_measure_every_column() -> None:
    from engine.query.server import serve_in_thread

    server, thread = serve_in_thread(Hits())
    try:
        params = load_soak.query_params([f"query {n}" for n in range(12)], ["farm", "river"])
        assert params[4]["where"] == "split = 'test'" and "where" not in params[0]
        rows = [load_soak.run_phase(InProcess(server.server_address[1]), params, clients, 1.5) for clients in (2, 12)]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    for row in rows:
        assert row["ok"] > 0 and row["errors"] == 0, row
        assert row["p50_ms"] <= row["p95_ms"] <= row["max_ms"] and row["rss_after_mib"] > 0
        assert row["healthz_probes"] >= 1 and not row["healthz_failures"]
    report = {"index": "runs/x", "images": 2100, "factory": "IDMap,Flat", "test_time_views": 1, "queries": 12, "filtered_every": 5, "k": 10, "warmup_s": 1.0, "phases": rows,
              "machine": {"nproc": 2, "cpu_model": "cpu", "ram_bytes": 2**30, "python": "3"}, "server_tracebacks": 0,
              "meta": {"date": "today", "commit": "abc", "command": "python -m bench.load_soak --index X"}}
    text = load_soak.markdown(report)
    assert "2,100 images" in text and "| 12 |" in text and "Tracebacks in the server log: 0" in text and "python -m bench.load_soak" in text
    del report["images"]  # an older results file without the index facts still renders
    assert "(? images" in load_soak.markdown(report)
    assert all(row["stages_mean_ms"]["handler"] > 0 and "serialise" in row["stages_mean_ms"] for row in rows)


def test_server_timing_header_is_parsed() -> None:
    header = 'queue;dur=1.250, encode;dur=8.000;desc="batch 7", search;dur=0.5, serialise;dur=0.1, handler;dur=11'
    assert load_soak.parse_server_timing(header) == {"queue": 1.25, "encode": 8.0, "encode_batch": 7.0,
                                                      "search": 0.5, "serialise": 0.1, "handler": 11.0}
    assert load_soak.parse_server_timing(None) == {}


def test_batching_on_and_off_render_side_by_side() -> None:
    def phase(clients: int, rps: float, p50: float, stages: dict) -> dict:
        return {"clients": clients, "seconds": 10.0, "ok": int(rps * 10), "errors": 0, "error_kinds": {},
                "throughput_rps": rps, "p50_ms": p50, "p95_ms": p50 * 2, "p99_ms": p50 * 3, "max_ms": p50 * 4,
                "rss_before_mib": 900.0, "rss_after_mib": 901.0, "rss_peak_mib": 902.0, "server_cpu_s": 9.0,
                "load_average_before": 3.0, "load_average_after": 3.5, "healthz_probes": 10, "healthz_failures": [],
                "stages_mean_ms": stages}

    report = {"index": "runs/x", "images": 2100, "factory": "IDMap,Flat", "test_time_views": 1, "queries": 50,
              "filtered_every": 5, "k": 10, "warmup_s": 5.0, "machine": {"nproc": 2, "cpu_model": "cpu",
                                                                         "ram_bytes": 2**30, "python": "3"},
              "modes": [{"batch": "off", "server_tracebacks": 0,
                         "phases": [phase(1, 40.0, 20.0, {"encode": 9.0}), phase(10, 60.0, 150.0, {"encode": 9.5})]},
                        {"batch": "on", "server_tracebacks": 0,
                         "phases": [phase(1, 42.0, 19.0, {"encode": 9.0, "encode_batch": 1.0}),
                                    phase(10, 180.0, 50.0, {"encode": 20.0, "encode_batch": 6.5})]}],
              "meta": {"date": "today", "commit": "abc", "command": "python -m bench.load_soak --batch on off",
                       "note": "a training run shared the cores"}}
    text = load_soak.markdown(report)
    assert "| off | 10 |" in text and "| on | 10 |" in text and "a training run shared the cores" in text
    assert "10 client(s): batching on gives 3.00× the req/s of off (180.0 vs 60.0)" in text
    assert "| on | 10 | — | 20.0 | — | — | — | 6.5 | 50.0 |" in text


def test_index_sentences_and_labels(tmp_path_factory) -> None:
    from query_fixtures import build_query_index

    index_dir, _, _ = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    texts, labels = load_soak.index_sentences(index_dir, 20)
    assert len(texts) == 20 == len(set(texts)) and labels == ["farm", "river"]
