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

EXACT_SUBSET_MAX = 4096
MISSING_ID = -1


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


def search_batch_selected(index, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """faiss search of (n, D) queries among ``allowed`` ids only, with the index's own nprobe/efSearch.

    Returns faiss's raw (scores, ids), both (n, k); an approximate index may leave ``MISSING_ID`` slots.
    One call for many queries lets faiss parallelise (``engine eval --index`` searches every caption at once).
    """
    import faiss

    if hasattr(index, "search_selected"):  # served by Ray shard actors: each filters its own part
        return index.search_selected(queries, k, allowed)
    if isinstance(index, faiss.IndexShards):
        # Part by part, each with its own parameters: faiss's threaded IndexShards hands one params object to
        # all parts at once, and IndexIDMap swaps its ``sel`` in place (a data race: wrong ids, segfaults).
        answers = [search_batch_selected(faiss.downcast_index(index.at(number)), queries, k, allowed)
                   for number in range(index.count())]
        return merge_top_k([scores for scores, _ in answers], [ids for _, ids in answers], k)
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    params = _parameters_like(index)
    params.sel = selector  # ``selector`` stays referenced until the search returns
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)


def merge_top_k(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best (inner product: highest) of several parts' (n, k) answers; empty slots stay
    ``MISSING_ID`` with faiss's lowest score. Ties keep part order (a stable sort)."""
    all_scores = np.concatenate(scores, axis=1)
    all_ids = np.concatenate(ids, axis=1)
    all_scores = np.where(all_ids == MISSING_ID, -np.inf, all_scores)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    best_ids = np.take_along_axis(all_ids, order, axis=1)
    best_scores = np.take_along_axis(all_scores, order, axis=1).astype(np.float32)
    best_scores[best_ids == MISSING_ID] = -np.finfo(np.float32).max
    return best_scores, best_ids


def search_parameters(index) -> dict[str, int]:
    """The search-time parameters the index actually uses (efSearch or nprobe), for reports; {} for exact."""
    if hasattr(index, "search_parameters"):  # served by Ray shard actors
        return index.search_parameters()
    params = _parameters_like(index)
    return {name: int(getattr(params, name)) for name in ("efSearch", "nprobe") if hasattr(params, name)}


def _parameters_like(index):
    """Search parameters of the index's own kind, carrying its nprobe/efSearch (defaults would override them)."""
    import faiss

    if isinstance(index, faiss.IndexShards):  # every part carries the same nprobe/efSearch (calibrated together)
        index = faiss.downcast_index(index.at(0))
    inner = index
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = inner.hnsw.efSearch
        return params
    try:
        ivf = faiss.extract_index_ivf(inner)
    except RuntimeError:
        return faiss.SearchParameters()
    params = faiss.SearchParametersIVF()
    params.nprobe = ivf.nprobe
    return params


def _valid(ids: np.ndarray, scores: np.ndarray, method: str) -> Neighbours:
    keep = ids != MISSING_ID
    return Neighbours(ids[keep].astype(np.int64), scores[keep].astype(np.float32), method)
