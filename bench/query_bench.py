"""Warm-server latency of k=10 text queries: p50/p95 without reranking and with each reranker.

    python -m bench.query_bench --index INDEX_DIR [--queries 200] [--update-docs]

Starts ``engine serve``'s server in-process on loopback (model, index and catalog loaded once), warms it up
(including the attention cache of the candidates, so reranked timings are the steady state a warm server
reaches), then times end-to-end HTTP requests one after another. Raw timings go to
``docs/bench/query_<index name>.json``; ``--update-docs`` rewrites the ``query`` block of docs/benchmarks.md.
The CPU may be shared with other work: the JSON records the machine's core count and load average.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

QUERIES = ("airport with runways", "dense residential area", "a river through green fields", "baseball diamond",
           "parking lot with many cars", "beach and sea", "harbor with boats", "tennis court", "freeway",
           "storage tanks", "golf course", "sparse residential houses")
RERANKERS = ("none", "aas", "par")
K, WARMUP = 10, 3
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _get(port: int, params: dict) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    started = time.perf_counter()
    connection.request("GET", "/query?" + urlencode(params))
    response = connection.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1000
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"query failed with HTTP {response.status}")
    return elapsed


def measure(index: Path, count: int, depth: int) -> dict:
    import torch

    from engine.query.engine import QueryEngine
    from engine.query.server import serve_in_thread

    engine = QueryEngine(index, device="cpu")
    server, _ = serve_in_thread(engine)
    port = server.server_address[1]
    report = {"index": str(index), "images": engine.image_count, "factory": engine.loaded.config.factory,
              "k": K, "rerank_depth": depth, "queries": count, "cpu_count": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(), "results": {}}
    try:
        for method in RERANKERS:
            params = [{"q": QUERIES[i % len(QUERIES)], "k": K, "rerank": method, "rerank_depth": depth}
                      for i in range(count)]
            for warm in params[:max(WARMUP, len(QUERIES))]:
                _get(port, warm)
            timings = np.array([_get(port, p) for p in params])
            report["results"][method] = {"p50_ms": float(np.percentile(timings, 50)),
                                         "p95_ms": float(np.percentile(timings, 95)),
                                         "mean_ms": float(timings.mean()), "raw_ms": timings.round(3).tolist()}
    finally:
        server.shutdown()
        server.server_close()
        engine.close()
    return report


def markdown(report: dict) -> str:
    lines = [f"### Query latency (warm server, k={report['k']} text queries, loopback HTTP)", "",
             f"Index `{report['index']}`: {report['images']} images, faiss `{report['factory']}`; "
             f"{report['queries']} queries per row, rerank depth {report['rerank_depth']}; "
             f"{report['cpu_count']} CPU cores, shared (load average {report['load_average'][0]:.1f}). "
             "Refresh: `python -m bench.query_bench --index INDEX_DIR --update-docs`.", "",
             "| rerank | p50 ms | p95 ms |", "|---|---:|---:|"]
    lines += [f"| {name} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} |" for name, row in report["results"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rerank-depth", type=int, default=50)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    report = measure(args.index, args.queries, args.rerank_depth)
    out = DOCS / "bench" / f"query_{args.index.resolve().name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp")
    temp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temp, out)
    print(markdown(report))
    if args.update_docs:
        from bench.docs_blocks import update_page

        update_page(DOCS / "benchmarks.md", "query", markdown(report))


if __name__ == "__main__":
    main()
