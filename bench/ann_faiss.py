"""faiss side of the ANN benchmark: build an index from a factory string once, then sweep a search parameter.

Training samples follow the indexing package's rule of thumb (a deterministic uniform sample, a fixed number
of points per IVF centroid). IVF-PQ can reuse the coarse centroids trained for IVF-Flat with the same
``nlist``: k-means is by far the most expensive part of both, and the report states the reuse.

Builds run with faiss's OpenMP threads but single-threaded BLAS: faiss already parallelises around its BLAS
calls, and nested OpenBLAS threads that spin-wait made PQ training ~6x slower on a busy 2-core machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.ann_measure import memory_delta, timed
from bench.ann_methods import MethodResult, Workload, measure

TRAIN_POINTS_PER_CENTROID = 40  # just above faiss's 39-points-per-centroid warning: k-means dominates 1 M builds
TRAIN_SAMPLE_MIN = 20_000
TRAIN_SEED = 0


@dataclass(frozen=True)
class Family:
    """One faiss index type: how to build it and which search parameter to sweep."""

    method: str
    factory: str
    sweep_param: str | None = None
    sweep_values: tuple[int, ...] = ()
    construction: tuple[tuple[str, int], ...] = ()
    fixed_search: tuple[tuple[str, int], ...] = ()
    note: str = ""


def set_parameter(index, name: str, value: int) -> None:
    """Set ``nprobe`` / ``efSearch`` / ``efConstruction`` / ``k_factor`` through IDMap and Refine wrappers."""
    import faiss

    if name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
        return
    if name == "k_factor":
        faiss.downcast_index(index).k_factor = value
        return
    inner = faiss.downcast_index(index)
    while not hasattr(inner, "hnsw"):
        if not hasattr(inner, "index"):
            raise ValueError(f"{name} needs an HNSW index, got {type(inner).__name__}")
        inner = faiss.downcast_index(inner.index)
    setattr(inner.hnsw, name, value)


def training_sample(base: np.ndarray, nlist: int) -> np.ndarray:
    size = min(len(base), max(TRAIN_SAMPLE_MIN, nlist * TRAIN_POINTS_PER_CENTROID))
    rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(len(base), size=size, replace=False))
    return np.ascontiguousarray(base[rows])


def build(family: Family, workload: Workload, centroids: np.ndarray | None = None):
    """Construct, train (unless given trained ``centroids``) and fill the index; returns (index, result stub)."""
    import faiss

    from threadpoolctl import threadpool_limits

    base = workload.base
    result = MethodResult(method=family.method, label=family.factory, note=family.note,
                          params={name: value for name, value in family.construction})
    with memory_delta() as memory, threadpool_limits(limits=1, user_api="blas"):
        index = faiss.index_factory(base.shape[1], family.factory, faiss.METRIC_INNER_PRODUCT)
        for name, value in family.construction:
            set_parameter(index, name, value)
        if centroids is not None:
            faiss.extract_index_ivf(index).quantizer.add(centroids)
        if not index.is_trained:
            nlist = faiss.extract_index_ivf(index).nlist if "IVF" in family.factory else 1
            _, result.train_s = timed(lambda: index.train(training_sample(base, nlist)))
        ids = np.arange(len(base), dtype=np.int64)
        _, result.add_s = timed(lambda: index.add_with_ids(base, ids) if "IDMap" in family.factory
                                else index.add(base))
    result.rss_delta_bytes, result.peak_delta_bytes = memory.rss_delta_bytes, memory.peak_delta_bytes
    result.index_bytes = int(faiss.serialize_index(index).nbytes)
    return index, result


def sweep(family: Family, workload: Workload, centroids: np.ndarray | None = None,
          extra_note: str = "") -> tuple[object, list[MethodResult]]:
    """Build once, then measure every value of the sweep parameter (or the index as is when there is none)."""
    index, stub = build(family, workload, centroids)
    if extra_note:
        stub.note = "; ".join(filter(None, [stub.note, extra_note]))
    for name, value in family.fixed_search:
        set_parameter(index, name, value)
    k = workload.k

    def search_batch(queries: np.ndarray) -> np.ndarray:
        return index.search(queries, k)[1]

    def search_one(query: np.ndarray) -> np.ndarray:
        return index.search(query, k)[1]

    rows = []
    for value in family.sweep_values or (None,):
        row = MethodResult(**{**vars(stub), "params": dict(stub.params)})
        row.params.update(dict(family.fixed_search))
        if value is not None:
            set_parameter(index, family.sweep_param, value)
            row.params[family.sweep_param] = value
        rows.append(measure(row, workload, search_batch, search_one))
    return index, rows


def ivf_centroids(index) -> np.ndarray:
    """The trained coarse centroids of an IVF index (to train IVF-PQ without a second k-means)."""
    import faiss

    quantizer = faiss.extract_index_ivf(index).quantizer
    return quantizer.reconstruct_n(0, quantizer.ntotal)


def refine_sweep(pq_index, pq_row: MethodResult, workload: Workload, k_factor: int,
                 nprobes: tuple[int, ...]) -> list[MethodResult]:
    """Wrap the filled IVF-PQ index with exact re-ranking of ``k_factor * k`` candidates over the raw
    vectors (faiss ``IndexRefine`` + a flat index); reuses the PQ index, so only the flat copy is built."""
    import faiss

    base = workload.base
    with memory_delta() as memory:
        flat = faiss.IndexFlatIP(base.shape[1])
        _, add_s = timed(lambda: flat.add(base))
        index = faiss.IndexRefine(pq_index, flat)
        index.k_factor = k_factor
    family = Family(method="ivf_pq_refine", factory=f"{pq_row.label},Refine(Flat)", sweep_param="nprobe",
                    sweep_values=nprobes)
    stub = MethodResult(method=family.method, label=family.factory, params={"k_factor": k_factor},
                        train_s=pq_row.train_s, add_s=pq_row.add_s + add_s,
                        index_bytes=pq_row.index_bytes + int(faiss.serialize_index(flat).nbytes),
                        rss_delta_bytes=pq_row.rss_delta_bytes + memory.rss_delta_bytes,
                        note="the IVF-PQ index above plus exact re-ranking over the raw float32 vectors")
    rows = []
    for value in nprobes:
        set_parameter(index, "nprobe", value)
        row = MethodResult(**{**vars(stub), "params": {**stub.params, "nprobe": value}})
        rows.append(measure(row, workload, lambda queries: index.search(queries, workload.k)[1],
                            lambda query: index.search(query, workload.k)[1]))
    return rows
