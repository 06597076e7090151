"""Image→image Recall@K by class: the metric of the background-bias study (and of metric-learning papers).

Every image of a labelled set is a query once; the gallery is every *other* image of the set; a query is a hit
at K when at least one of its K nearest gallery images shares its class label. Ranking is by exact dot product
of L2-normalised embeddings; equal scores keep set order (a stable sort, as ``ties="index"`` in
:mod:`engine.metrics`). Queries whose class has no other member can never hit and are left out
(their number is returned so a report can say so). Chunked: the score matrix is never materialised whole.
"""

from __future__ import annotations

import numpy as np

CLASS_KS = (1, 2, 4, 8)
NO_PARTNER = -1


def first_same_class_ranks(embeddings, labels: list, chunk_size: int = 512) -> np.ndarray:
    """0-based rank of each query's first same-class gallery image; ``NO_PARTNER`` when its class is a singleton."""
    matrix = np.asarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != len(labels):
        raise ValueError(f"embeddings must be (len(labels), dim), got {matrix.shape} for {len(labels)} labels")
    _, codes = np.unique(np.asarray([str(label) for label in labels]), return_inverse=True)
    count = matrix.shape[0]
    positions = np.arange(count)
    ranks = np.full(count, NO_PARTNER, dtype=np.int64)
    for start in range(0, count, chunk_size):
        stop = min(start + chunk_size, count)
        scores = matrix[start:stop] @ matrix.T  # (chunk, count)
        is_self = positions[None, :] == positions[start:stop, None]
        same = (codes[None, :] == codes[start:stop, None]) & ~is_self
        best_same = np.where(same, scores, -np.inf).max(axis=1)
        # the first same-class item in (score desc, position asc) order: the lowest position at the best score
        first_best = np.argmax(same & (scores == best_same[:, None]), axis=1)
        other = ~same & ~is_self
        above = other & (scores > best_same[:, None])
        tied_before = other & (scores == best_same[:, None]) & (positions[None, :] < first_best[:, None])
        has_partner = same.any(axis=1)
        ranks[start:stop] = np.where(has_partner, (above | tied_before).sum(axis=1), NO_PARTNER)
    return ranks


def recalls_from_class_ranks(ranks: np.ndarray, ks: tuple[int, ...] = CLASS_KS) -> dict[str, float]:
    """R@K in percent over the queries that have a same-class partner (``NO_PARTNER`` ranks are skipped)."""
    valid = ranks[ranks != NO_PARTNER]
    return {f"r{k}": float((valid < k).mean() * 100) if valid.size else 0.0 for k in ks}


def class_recalls(embeddings, labels: list, ks: tuple[int, ...] = CLASS_KS) -> dict[str, float]:
    """Image→image Recall@K by class (percent) of a labelled embedding set; see the module docstring."""
    return recalls_from_class_ranks(first_same_class_ranks(embeddings, labels), ks)


def per_class_recalls(embeddings, labels: list, ks: tuple[int, ...] = CLASS_KS) -> dict[str, dict[str, float]]:
    """Image→image Recall@K by class, per query class: {class: {"r1": .., ...}} (percent), classes sorted.

    The background-bias study's diagnosis: a class whose recall rises when the background is masked was being
    confused by its background; one whose recall falls was recognised by it."""
    ranks = first_same_class_ranks(embeddings, labels)
    names = np.asarray([str(label) for label in labels])
    return {name: recalls_from_class_ranks(ranks[names == name], ks) for name in sorted(set(names.tolist()))}
