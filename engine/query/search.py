"""First-stage k-NN search, with the SQL filter applied before the search, never after.

Post-filtering (search k, then drop rows that fail the filter) returns fewer than k results whenever the
filter is selective — the pain behind faiss #4727 and clip-retrieval #158. Here the filter's ids come first:
- up to ``EXACT_SUBSET_MAX`` ids: exact inner product over those ids' stored embeddings (one DuckDB read and
  one small matmul: faster than a selector walk over the whole index, and exact);
- more ids: faiss search restricted by ``SearchParameters(sel=IDSelectorBatch(ids))``, keeping the index's own
  nprobe/efSearch; if an approximate index still returns fewer than min(k, matches) ids (an IVF probe or an
  HNSW walk can run out of allowed neighbours), the exact subset search answers instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indexing.faiss_search import MISSING_ID, search_batch_selected

EXACT_SUBSET_MAX = 4096


@dataclass(frozen=True)
class Neighbours:
    ids: np.ndarray  # (n,) int64, best first
    scores: np.ndarray  # (n,) float32 inner products (= cosine for normalised embeddings)
    method: str  # "faiss", "faiss+selector" or "exact-subset"


def search_index(index, query: np.ndarray, k: int) -> Neighbours:
    """Unfiltered search of one (D,) query; k is clamped to the index size."""
    count = min(k, int(index.ntotal))
    if count == 0:
        return Neighbours(np.zeros(0, np.int64), np.zeros(0, np.float32), "faiss")
    scores, ids = index.search(np.ascontiguousarray(query[None, :], dtype=np.float32), count)
    return _valid(ids[0], scores[0], "faiss")


def search_subset(index, query: np.ndarray, k: int, allowed: np.ndarray, store) -> Neighbours:
    """The k best of the ``allowed`` ids only (sorted int64 ids from the SQL filter)."""
    if len(allowed) == 0:
        return Neighbours(np.zeros(0, np.int64), np.zeros(0, np.float32), "exact-subset")
    wanted = min(k, len(allowed))
    if len(allowed) <= EXACT_SUBSET_MAX:
        return exact_subset(query, wanted, allowed, store)
    found = _selector_search(index, query, wanted, allowed)
    if len(found.ids) < wanted:
        return exact_subset(query, wanted, allowed, store)
    return found


def exact_subset(query: np.ndarray, k: int, allowed: np.ndarray, store) -> Neighbours:
    ids, matrix = store.embeddings_for(allowed)
    return top_k(ids, matrix @ query.astype(np.float32), k, "exact-subset")


def top_k(ids: np.ndarray, scores: np.ndarray, k: int, method: str) -> Neighbours:
    """Best k by score; ties broken by the smaller id so results are deterministic."""
    if len(ids) == 0:
        return Neighbours(np.zeros(0, np.int64), np.zeros(0, np.float32), method)
    order = np.lexsort((ids, -scores))[:k]
    return Neighbours(ids[order].astype(np.int64), scores[order].astype(np.float32), method)


def _selector_search(index, query: np.ndarray, k: int, allowed: np.ndarray) -> Neighbours:
    scores, ids = search_batch_selected(index, query[None, :], k, allowed)
    return _valid(ids[0], scores[0], "faiss+selector")


def _valid(ids: np.ndarray, scores: np.ndarray, method: str) -> Neighbours:
    keep = ids != MISSING_ID
    return Neighbours(ids[keep].astype(np.int64), scores[keep].astype(np.float32), method)
