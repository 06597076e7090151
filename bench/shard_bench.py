"""Sharded serving: warm-server latency and memory per process, in-process faiss vs one Ray actor per shard.

    python -m bench.shard_bench --index runs/syn-10m [--backends local ray] [--queries 300] [--update-docs]

For each backend in turn (same index folder, same queries, same run): ``QueryEngine`` as ``engine serve`` builds
it (``--shard-backend local|ray``, ONNX Runtime text encoder), served on loopback; k=10 text queries without
rerank are timed end to end over HTTP (p50/p95) with the server's own search-stage time, after a warm-up.
Memory: resident and peak resident bytes of the server process, and of every shard actor (Ray). Recall@10 of the
served answers against exact search over the Parquet shards (computed shard by shard) for the same encoded
queries; the backends' answers are also compared with each other (same ids in the same order).
Results: ``docs/bench/shards_<index name>.json``; ``--update-docs`` rewrites the block ``shards-<index name>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from release.docs_blocks import markdown_table, update_page
from bench.machine import load_average, run_meta
from engine.atomic import write_json_atomic
from bench.query_bench import K, WARMUP, get_query, percentiles, query_texts

REPO = Path(__file__).resolve().parents[1]

GOAL_RECALL = 0.95


def _process_memory() -> dict[str, int]:
    from indexing.ray_shards import process_memory

    return process_memory()


def measure_backend(index: Path, backend: str, count: int) -> dict:
    from engine.query.engine import QueryEngine
    from engine.query.server import serve_in_thread

    started = time.perf_counter()
    engine = QueryEngine(index, device="cpu", text_encoder="auto", shard_backend=backend)
    load_seconds = time.perf_counter() - started
    server, _ = serve_in_thread(engine)
    port = server.server_address[1]
    try:
        texts = query_texts(engine, count)
        params = [{"q": text, "k": K} for text in texts]
        for warm in params[:WARMUP]:
            get_query(port, warm)
        timed = [get_query(port, p) for p in params]
        answers = [[hit["image_id"] for hit in answer["results"]] for _, answer in timed]
        vectors = np.stack([engine.encode_text(text, []) for text in texts]).astype(np.float32)
        row = {"backend": backend, "load_seconds": load_seconds, "queries": len(timed),
               **percentiles([elapsed for elapsed, _ in timed]),
               "search": percentiles([answer["timings_ms"]["search"] for _, answer in timed]),
               "server_memory": _process_memory(), "parts": len(engine.loaded.config.faiss_shards) or 1,
               "factory": engine.loaded.config.factory, "params": engine.loaded.config.index_params,
               "images": engine.image_count}
        if hasattr(engine.loaded.index, "memory"):
            row["actor_memory"] = engine.loaded.index.memory()
        return row | {"answers": answers, "vectors": vectors, "texts": texts}
    finally:
        server.shutdown()
        server.server_close()
        engine.close()


def exact_ids(index: Path, vectors: np.ndarray) -> np.ndarray:
    from indexing.calibrate import NO_ID, exact_neighbours

    return exact_neighbours(index, vectors, np.full(len(vectors), NO_ID, np.int64), K)


def recall(answers: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(found[:K]) & set(row.tolist())) / K for found, row in zip(answers, truth)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--backends", nargs="+", default=["local", "ray"])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--note", default="", help="free text recorded with the run (e.g. what else was running)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = load_average()
    rows = []
    for backend in args.backends:
        rows.append(measure_backend(args.index, backend, args.queries))
        print(f"{backend}: p50 {rows[-1]['p50_ms']:.1f} ms, p95 {rows[-1]['p95_ms']:.1f} ms", flush=True)
    truth = exact_ids(args.index, rows[0]["vectors"])
    for row in rows:
        row["recall"] = recall(row["answers"], truth)
        row["same_answers_as_first"] = row["answers"] == rows[0]["answers"]
    result = {"meta": run_meta(REPO), "index": str(args.index), "load_before": load_before,
              "load_after": load_average(), "note": args.note,
              "rows": [{key: value for key, value in row.items() if key not in ("answers", "vectors", "texts")}
                       for row in rows]}
    name = args.index.resolve().name
    write_json_atomic(REPO / "docs" / "bench" / f"shards_{name}.json", result, indent=1)
    text = render(result)
    print(text)
    if args.update_docs:
        update_page(REPO / "docs" / "benchmarks.md", f"shards-{name}", text)
    return 0


def _gib(value: int) -> str:
    return f"{value / 2**30:.2f}"


def render(result: dict) -> str:
    rows = result["rows"]
    first = rows[0]
    params = ", ".join(f"{key} {value}" for key, value in first["params"].items())
    table = []
    for row in rows:
        actors = row.get("actor_memory") or []
        actor_text = (" / ".join(_gib(actor["rss_bytes"]) for actor in actors) if actors else "—")
        table.append([f"{row['backend']} ({row['parts']} part{'s' if row['parts'] > 1 else ''})",
                      f"{row['p50_ms']:.1f}", f"{row['p95_ms']:.1f}", f"{row['search']['p50_ms']:.1f}",
                      f"{row['recall']:.4f}", "yes" if row["same_answers_as_first"] else "no",
                      _gib(row["server_memory"]["rss_bytes"]), _gib(row["server_memory"]["peak_rss_bytes"]),
                      actor_text, f"{row['load_seconds']:.0f}"])
    meta = result["meta"]
    note = f" Note: {result['note']}" if result.get("note") else ""
    built = REPO / "docs" / "bench" / f"synthetic_{Path(result['index']).resolve().name}.json"
    build_line = []
    if built.is_file():
        build = json.loads(built.read_text())
        build_line = ["", f"Built by `{build['meta']['command']}` ({build['meta']['date']}): vectors written in "
                      f"{build['shard_seconds']:.0f} s, FAISS (train + add + calibrate + save) "
                      f"{build['faiss_seconds']:.0f} s, search tuned to {build['calibration']}; peak RSS of the build "
                      f"process {build['peak_rss_gib']:.2f} GiB."]
    return "\n".join([
        f"### Sharded serving over `{result['index']}` (`bench/shard_bench.py`)", "",
        f"{first['images']:,} vectors, faiss `{first['factory']}` ({params}); {first['queries']} distinct k={K} text "
        f"queries per backend over loopback HTTP, no rerank, ONNX Runtime text encoder. Run {meta['date']} on "
        f"{meta['machine']}, load average {result['load_before']} before, {result['load_after']} after (CPU shared "
        f"with other engineers' jobs).{note} Command: `{meta['command']}`.", "",
        markdown_table(["backend", "p50 ms", "p95 ms", "search p50 ms", f"recall@{K} vs exact",
                        "same ids as first row", "server RSS GiB", "server peak GiB", "actor RSS GiB",
                        "load s"], table), *build_line])


if __name__ == "__main__":
    sys.exit(main())
