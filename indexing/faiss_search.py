"""Raw faiss searches an index folder's reader needs, in process or on Ray shard actors (indexing.ray_shards):
a batch of queries restricted to allowed ids with the index's own nprobe/efSearch, the merge of per-shard top-k
answers, and the search parameters in use. The query layer's filtered search (``engine.query.search``) builds on
these; they live here so the index reader and its shard actors need nothing from the layers above.
"""

from __future__ import annotations

import numpy as np

MISSING_ID = -1


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
