"""Ranked lists from an index's own faiss search, optionally reranked by the query engine's AAS/PAR rerankers.

The gallery is one split: every search is restricted to the split's ids with a faiss ``IDSelectorBatch``
(:func:`indexing.faiss_search.search_batch_selected`, the index's own nprobe/efSearch), so an index that also
holds train/val images is scored exactly like the exact evaluation's split gallery. A list holds at most
``depth`` items; a relevant item that is not in it gets rank :data:`MISSED`, i.e. counts as a miss for every
R@K (``depth`` must be at least the largest K). First-stage lists are ordered by score, equal scores in split
order (the exact evaluation's default tie rule), so a Flat index reproduces the exact ranks.
Reranking reuses :func:`engine.query.rerank.apply.rerank` unchanged (attention-feature cache in the index folder,
feature batches of ``FEATURE_BATCH``) and the engine's final ordering (score, then smaller id).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from engine.query.request import QueryRequest
from engine.query.search import Neighbours
from indexing.faiss_search import MISSING_ID, search_batch_selected

PAR_GATE_NOTE = re.compile(r"par-bonus: (\d+) of (\d+) candidates passed")  # written by engine.query.rerank.apply

MISSED = np.iinfo(np.int32).max  # rank of a relevant item the search did not return (a miss at any K)
PERCENTILES = (50, 95)


def search_lists(index, queries: np.ndarray, depth: int, allowed: np.ndarray, position_of: dict[int, int],
                 exclude: np.ndarray | None = None) -> list[Neighbours]:
    """Top-``depth`` allowed ids per query (one batched faiss call); ``exclude[i]`` is dropped from list i."""
    extra = 0 if exclude is None else 1
    count = min(depth + extra, len(allowed))
    scores, ids = search_batch_selected(index, queries, count, allowed)
    lists = []
    for row in range(len(queries)):
        keep = ids[row] != MISSING_ID
        if exclude is not None:
            keep &= ids[row] != exclude[row]
        found, found_scores = ids[row][keep].astype(np.int64), scores[row][keep].astype(np.float32)
        order = np.lexsort((np.array([position_of[int(value)] for value in found], np.int64), -found_scores))
        order = order[:depth]
        lists.append(Neighbours(found[order], found_scores[order], "faiss+selector"))
    return lists


def target_ranks(lists: list[Neighbours], targets: np.ndarray, pessimistic: bool = False) -> np.ndarray:
    """0-based rank of ``targets[i]`` in list i (:data:`MISSED` when absent).

    ``pessimistic``: every other listed item scoring at least the target's score ranks above it.
    """
    ranks = np.full(len(lists), MISSED, dtype=np.int64)
    for row, (found, target) in enumerate(zip(lists, targets)):
        where = np.flatnonzero(found.ids == target)
        if len(where) == 0:
            continue
        position = int(where[0])
        if pessimistic:
            ranks[row] = int((found.scores >= found.scores[position]).sum()) - 1
        else:
            ranks[row] = position
    return ranks


def class_hit_ranks(lists: list[Neighbours], label_of: dict[int, str | None], query_labels: list) -> np.ndarray:
    """0-based position of the first listed image of the query's class (:data:`MISSED` when none is listed)."""
    ranks = np.full(len(lists), MISSED, dtype=np.int64)
    for row, (found, label) in enumerate(zip(lists, query_labels)):
        hits = [position for position, image_id in enumerate(found.ids) if label_of.get(int(image_id)) == label]
        if hits:
            ranks[row] = hits[0]
    return ranks


@dataclass
class RerankRun:
    """Reranked lists and what each rerank call cost (milliseconds, attention-cache misses included)."""

    lists: list[Neighbours]
    latencies_ms: np.ndarray
    cold: np.ndarray  # bool per query: its call had to encode attention features of uncached images
    images_encoded: int
    notes: list[str] = field(default_factory=list)
    gated: int = 0  # PAR: candidates that passed both gates, summed over queries
    gate_candidates: int = 0  # PAR: candidates considered, summed over queries


def rerank_lists(engine, first: list[Neighbours], requests: list[QueryRequest], vectors: np.ndarray,
                 pixels_of: Callable[[int], object] | None = None) -> RerankRun:
    """Rerank every first-stage list with the query engine; ``pixels_of(i)`` gives image query i's pixels."""
    from engine.query.rerank.apply import rerank

    lists, latencies, cold, notes = [], np.zeros(len(first)), np.zeros(len(first), bool), []
    encoded = gated = gate_candidates = 0
    for row, (found, request) in enumerate(zip(first, requests)):
        if len(found.ids) == 0:
            lists.append(found)
            continue
        # on the engine's model thread, like a served query (torch work from a second thread slows both)
        pixels = engine.run_model(pixels_of, row) if request.is_image and pixels_of is not None else None
        cache = engine.attention_cache(request.options.layer)
        uncached = len(cache.missing([int(value) for value in found.ids]))
        call_notes: list[str] = []
        started = time.perf_counter()
        scores = engine.run_model(rerank, engine, request, found, vectors[row], pixels, call_notes)
        latencies[row] = (time.perf_counter() - started) * 1000
        cold[row], encoded = uncached > 0, encoded + uncached
        notes.extend(note for note in call_notes if not note.startswith(f"{request.rerank}:"))
        for note in call_notes:
            gates = PAR_GATE_NOTE.match(note)
            if gates:
                gated += int(gates.group(1))
                gate_candidates += int(gates.group(2))
        order = np.lexsort((found.ids, -scores))  # the engine's final order: score, then the smaller id
        lists.append(Neighbours(found.ids[order], scores[order].astype(np.float32), f"{found.method}+{request.rerank}"))
    return RerankRun(lists, latencies, cold, encoded, sorted(set(notes)), gated, gate_candidates)


def latency_summary(latencies_ms: np.ndarray) -> dict[str, float]:
    """p50/p95/mean/max in milliseconds and the number of calls (empty input -> count 0 only)."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    summary = {f"p{level}_ms": round(float(np.percentile(values, level)), 3) for level in PERCENTILES}
    summary.update(mean_ms=round(float(values.mean()), 3), max_ms=round(float(values.max()), 3), count=int(values.size))
    return summary
