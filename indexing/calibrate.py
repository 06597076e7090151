"""Tune an approximate index's search knob (HNSW ``efSearch``, IVF ``nprobe``) to a target recall, measured.

Why: a fixed efSearch/nprobe gives very different recall on different data. On clustered synthetic 512-d
vectors HNSW32 with efSearch 512 reached recall@10 0.956 at 1 M, but on a 1 M index of near-duplicate tiles
(2,100 real UCM embeddings, each copied ~476 times with noise) the same setting gave 0.878, and 0.957 needed
efSearch 4096 (docs/benchmarks.md). So after building, like autofaiss, the build measures recall@10 against
exact search on a sample of queries and keeps the cheapest setting that reaches ``TARGET_RECALL``; the result
(setting, recall, queries) goes into index.json so a user knows what the index delivers.

Queries: caption embeddings from ``text_shards/`` when the index has them (the text queries a server answers
live in a different region of the space than the images), otherwise stored image vectors, each excluding
itself (leave-one-out). Exact neighbours are computed shard by shard, so memory stays one shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexing.layout import TEXT_SHARDS_DIR
from indexing.shards import embeddings_of, read_columns, shard_files

TARGET_RECALL = 0.95
RECALL_K = 10
CALIBRATION_QUERIES = 256
CALIBRATION_SEED = 0
EF_SEARCH_LADDER = (32, 64, 128, 256, 512, 1024, 2048, 4096)
NO_ID = -1


@dataclass(frozen=True)
class Calibration:
    """What the tuning measured; ``reached`` is False when even the largest setting stays below the target."""

    parameter: str
    value: int
    recall: float
    target: float
    queries: int
    query_source: str  # "captions" or "images (leave-one-out)"
    reached: bool
    tried: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        verdict = "" if self.reached else f" (target {self.target} not reached: largest setting tried)"
        return (f"{self.parameter} {self.value}: recall@{RECALL_K} {self.recall:.3f} vs exact search on "
                f"{self.queries} {self.query_source} queries{verdict}")


def search_knob(index) -> tuple[str, list[int]] | None:
    """(parameter name, increasing candidate values) of an approximate index; None for exact indexes."""
    import faiss

    if isinstance(index, faiss.IndexShards):  # the parts share one kind and one quantiser; ParameterSpace sets all
        index = faiss.downcast_index(index.at(0))
    inner = faiss.downcast_index(index.index) if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch", list(EF_SEARCH_LADDER)
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        return None
    values, probe = [], 1
    while probe < nlist:
        values.append(probe)
        probe *= 2
    return "nprobe", values + [nlist]


def calibration_queries(index_dir: Path, count: int = CALIBRATION_QUERIES) -> tuple[np.ndarray, np.ndarray, str]:
    """(queries (n, D), the image id each query must not count as its own neighbour or NO_ID, source)."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    text_files = shard_files(index_dir, TEXT_SHARDS_DIR)
    if text_files:
        vectors = np.concatenate([embeddings_of(read_columns(file, ["embedding"])) for file in text_files])
        rows = np.sort(rng.choice(len(vectors), size=min(count, len(vectors)), replace=False))
        return vectors[rows], np.full(len(rows), NO_ID, np.int64), "captions"
    tables = [read_columns(file, ["image_id"]) for file in shard_files(index_dir)]
    sizes = [table.num_rows for table in tables]
    chosen = np.sort(rng.choice(sum(sizes), size=min(count, sum(sizes)), replace=False))
    queries, ids, offset = [], [], 0
    for file, size in zip(shard_files(index_dir), sizes):
        local = chosen[(chosen >= offset) & (chosen < offset + size)] - offset
        if len(local):
            table = read_columns(file, ["image_id", "embedding"])
            queries.append(embeddings_of(table)[local])
            ids.append(table.column("image_id").to_numpy()[local])
        offset += size
    return np.concatenate(queries), np.concatenate(ids).astype(np.int64), "images (leave-one-out)"


def exact_neighbours(index_dir: Path, queries: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """(n, k) ids of the exact top-k by inner product over all image shards, each query's excluded id left out."""
    best_ids = np.full((len(queries), 0), NO_ID, np.int64)
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    for file in shard_files(index_dir):
        table = read_columns(file, ["image_id", "embedding"])
        ids = table.column("image_id").to_numpy().astype(np.int64)
        scores = queries @ embeddings_of(table).T
        scores[exclude[:, None] == ids[None, :]] = -np.inf
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(all_scores, top, axis=1)
        best_ids = np.take_along_axis(all_ids, top, axis=1)
    return best_ids


def measured_recall(index, queries: np.ndarray, exclude: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |found ∩ truth| / k, the index searched k+1 deep so a query's own id can be dropped."""
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    hits = 0
    for row, own in enumerate(exclude):
        kept = [value for value in found[row] if value != own and value != NO_ID][:k]
        hits += len(set(kept) & set(truth[row].tolist()))
    return hits / (k * len(queries))


def calibrate(index, index_dir: Path, target: float = TARGET_RECALL) -> Calibration | None:
    """Set the cheapest knob value reaching ``target`` on ``index`` (in place) and say what was measured."""
    import faiss

    knob = search_knob(index)
    if knob is None:
        return None
    name, values = knob
    queries, exclude, source = calibration_queries(index_dir)
    k = min(RECALL_K, int(index.ntotal) - 1)
    if k <= 0 or len(queries) == 0:
        return None
    truth = exact_neighbours(index_dir, queries, exclude, k)
    space, tried = faiss.ParameterSpace(), {}
    for value in values:
        space.set_index_parameter(index, name, value)
        tried[value] = round(measured_recall(index, queries, exclude, truth, k), 4)
        if tried[value] >= target:
            return Calibration(name, value, tried[value], target, len(queries), source, True, tried)
    return Calibration(name, values[-1], tried[values[-1]], target, len(queries), source, False, tried)
