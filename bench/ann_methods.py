"""The methods the ANN benchmark compares: numpy brute force, a DuckDB scan and faiss indexes.

Every method is measured on the same :class:`Workload` (base vectors, held-out queries, exact top-k ids) and
produces :class:`MethodResult` rows: build/train time, memory, single-query latency per thread count, batch
throughput and recall@k against the exact reference. Row ids are base-vector positions everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from bench.ann_data import exact_top_k, recall_at_k
from bench.ann_measure import Latency, memory_delta, single_query_latency, thread_limit, timed

BATCH_CHUNK_QUERIES = 256


@dataclass(frozen=True)
class Workload:
    """What every method searches, and how hard latency is measured."""

    base: np.ndarray
    queries: np.ndarray
    truth: np.ndarray
    k: int
    threads: tuple[int, ...]
    latency_queries: int
    latency_budget_s: float

    def subset(self, count: int) -> "Workload":
        """The first ``count`` base vectors, with their own exact reference (for indexes too slow to build
        on the full set)."""
        base = self.base[:count]
        return replace(self, base=base, truth=exact_top_k(base, self.queries, self.k))


@dataclass
class MethodResult:
    """One measured configuration (one row of the report)."""

    method: str
    label: str
    params: dict[str, int | str] = field(default_factory=dict)
    base_count: int = 0
    train_s: float = 0.0
    add_s: float = 0.0
    index_bytes: int = 0
    rss_delta_bytes: int = 0
    peak_delta_bytes: int | None = None
    latency: list[Latency] = field(default_factory=list)
    batch_qps: float | None = None
    recall: float = 0.0
    recall_queries: int = 0
    note: str = ""

    def to_json(self) -> dict:
        data = {key: value for key, value in vars(self).items() if key != "latency"}
        data["latency"] = [item.to_json() for item in self.latency]
        return data


def _latencies(workload: Workload, search_one, collect: list | None = None) -> list[Latency]:
    results = []
    for position, threads in enumerate(workload.threads):
        results.append(single_query_latency(search_one, workload.queries, threads, workload.latency_queries,
                                            workload.latency_budget_s, collect if position == 0 else None))
    return results


def measure(result: MethodResult, workload: Workload, search_batch, search_one) -> MethodResult:
    """Fill recall and batch throughput (all queries, most threads) and single-query latencies."""
    with thread_limit(max(workload.threads)):
        ids, seconds = timed(lambda: search_batch(workload.queries))
    result.batch_qps = len(workload.queries) / seconds
    result.recall = recall_at_k(np.asarray(ids), workload.truth, workload.k)
    result.recall_queries = len(workload.queries)
    result.latency = _latencies(workload, search_one)
    result.base_count = len(workload.base)
    return result


def numpy_brute_force(workload: Workload) -> MethodResult:
    """Exact search as a plain numpy user writes it: one matmul, argpartition, sort the k winners."""
    base, k = workload.base, workload.k

    def search_batch(queries: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(queries), BATCH_CHUNK_QUERIES):
            scores = queries[start:start + BATCH_CHUNK_QUERIES] @ base.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
            parts.append(np.take_along_axis(top, order, axis=1))
        return np.concatenate(parts)

    def search_one(query: np.ndarray) -> np.ndarray:
        scores = base @ query[0]
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top])]

    result = MethodResult(method="numpy", label="numpy matmul + argpartition", index_bytes=base.nbytes,
                          note="exact; memory = the float32 matrix")
    return measure(result, workload, search_batch, search_one)


def duckdb_scan(workload: Workload) -> MethodResult:
    """Exact search as SQL: ``ORDER BY array_cosine_similarity(emb, ?) DESC LIMIT k`` over a FLOAT[dim]
    column (a FixedSizeList from Arrow must be cast to the ARRAY type for the array_* functions)."""
    import duckdb
    import pyarrow as pa

    base, dim, k = workload.base, workload.base.shape[1], workload.k
    connection = duckdb.connect()
    with memory_delta() as memory:
        values = pa.FixedSizeListArray.from_arrays(pa.array(base.reshape(-1)), dim)
        source = pa.table({"id": pa.array(np.arange(len(base), dtype=np.int64)), "emb": values})
        connection.register("source", source)
        _, load_s = timed(lambda: connection.execute(
            f"CREATE TABLE vectors AS SELECT id, emb::FLOAT[{dim}] AS emb FROM source"))
        connection.unregister("source")
        del source, values
    sql = f"SELECT id FROM vectors ORDER BY array_cosine_similarity(emb, ?::FLOAT[{dim}]) DESC LIMIT {k}"

    def search_one(query: np.ndarray) -> np.ndarray:
        rows = connection.execute(sql, [query[0].tolist()]).fetchall()
        return np.asarray([row[0] for row in rows], dtype=np.int64)

    results: list[np.ndarray] = []
    latencies = []
    for position, threads in enumerate(workload.threads):
        connection.execute(f"SET threads = {threads}")
        latencies += single_query_latency(search_one, workload.queries, threads, workload.latency_queries,
                                          workload.latency_budget_s, results if position == 0 else None),
    measured = len(results)
    result = MethodResult(method="duckdb", label="DuckDB array_cosine_similarity scan", base_count=len(base),
                          add_s=load_s, rss_delta_bytes=memory.rss_delta_bytes,
                          peak_delta_bytes=memory.peak_delta_bytes, latency=latencies,
                          recall=recall_at_k(np.stack(results), workload.truth[:measured], k),
                          recall_queries=measured,
                          note="exact; in-memory table; recall over the latency queries; no batch API")
    connection.close()
    return result
