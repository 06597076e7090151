"""Build ``faiss.index`` from the Parquet shards (the shards are the source of truth; the index is derived).

Vectors are added shard by shard with ``add_with_ids`` (the explicit int64 ``image_id``), so memory beyond the
index itself is one shard. IVF/PQ indexes are trained first on a deterministic uniform sample. With faiss GPU
support and ``--device`` allowing it, training and adding run on GPU 0 and the result is copied back to a
CPU index before saving, so every machine can load it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from engine.errors import DataError
from indexing.calibrate import Calibration, calibrate
from indexing.choose import IndexSpec, choose_index, validate_factory
from indexing.shards import embeddings_of, read_columns, replace_atomically, shard_files

TRAIN_SAMPLE_MIN = 20_000
TRAIN_POINTS_PER_CENTROID = 100
TRAIN_SAMPLE_MAX = 1_000_000
SAMPLE_SEED = 0


@dataclass(frozen=True)
class FaissBuild:
    spec: IndexSpec  # params hold the search settings saved in faiss.index (calibrated when approximate)
    count: int
    seconds: float
    device: str
    calibration: Calibration | None = None


def faiss_gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _supports_ids(index) -> bool:
    import faiss

    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return True
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _training_sample(files: list[Path], counts: list[int], size: int) -> np.ndarray:
    """Uniform sample of ``size`` embeddings over all shards, reading one shard at a time."""
    total = sum(counts)
    chosen = np.sort(np.random.default_rng(SAMPLE_SEED).choice(total, size=min(size, total), replace=False))
    parts, offset = [], 0
    for file, count in zip(files, counts):
        local = chosen[(chosen >= offset) & (chosen < offset + count)] - offset
        if len(local):
            parts.append(embeddings_of(read_columns(file, ["embedding"]))[local])
        offset += count
    return np.ascontiguousarray(np.concatenate(parts))


def build_faiss(index_dir: Path, dim: int, memory_budget: int, override: str | None, device: str) -> FaissBuild:
    """Choose, train, fill and save ``INDEX_DIR/faiss.index``; returns what was built."""
    import faiss

    start = time.perf_counter()
    files = shard_files(index_dir)
    counts = [pq.ParquetFile(file).metadata.num_rows for file in files]
    total = sum(counts)
    if override:
        validate_factory(override, dim)
    spec = choose_index(total, dim, memory_budget, override)
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if not _supports_ids(index):
        index = faiss.IndexIDMap(index)
    _apply_build_params(index, spec.params)
    use_gpu = device != "cpu" and faiss_gpu_count() > 0
    if use_gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    if not index.is_trained:
        nlist = spec.params.get("nlist", 1)
        sample_size = min(TRAIN_SAMPLE_MAX, max(TRAIN_SAMPLE_MIN, nlist * TRAIN_POINTS_PER_CENTROID))
        index.train(_training_sample(files, counts, sample_size))
    seen = 0
    for file in files:
        table = read_columns(file, ["image_id", "embedding"])
        ids = table.column("image_id").to_numpy().astype(np.int64)
        index.add_with_ids(np.ascontiguousarray(embeddings_of(table)), ids)
        seen += len(ids)
    if use_gpu:
        index = faiss.index_gpu_to_cpu(index)
    if index.ntotal != total or seen != total:
        raise DataError(f"{index_dir}: added {index.ntotal} vectors but the shards hold {total}")
    parameters = faiss.ParameterSpace()
    for name in ("nprobe", "efSearch"):
        if name in spec.params:
            parameters.set_index_parameter(index, name, spec.params[name])
    calibration = calibrate(index, index_dir)  # measured recall decides efSearch/nprobe, not a fixed default
    if calibration is not None:
        spec = replace(spec, params={**spec.params, calibration.parameter: calibration.value})
    replace_atomically(index_dir / "faiss.index", lambda temp: faiss.write_index(index, str(temp)))
    return FaissBuild(spec=spec, count=total, seconds=time.perf_counter() - start,
                      device="cuda" if use_gpu else "cpu", calibration=calibration)


def _apply_build_params(index, params: dict) -> None:
    """Set build-time knobs before vectors are added (faiss would silently use its own default, 40 for HNSW)."""
    import faiss

    if "efConstruction" not in params:
        return
    inner = faiss.downcast_index(index.index) if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else index
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = int(params["efConstruction"])


def check_unique_ids(index_dir: Path) -> None:
    """Ids must be unique across shards (faiss would silently keep both); 8 bytes per image in memory."""
    ids = [read_columns(file, ["image_id"]).column("image_id").to_numpy() for file in shard_files(index_dir)]
    if not ids:
        return
    merged = np.concatenate(ids)
    unique, counts = np.unique(merged, return_counts=True)
    if len(unique) != len(merged):
        raise DataError(f"{index_dir}: image_id {int(unique[counts > 1][0])} appears in more than one shard row; "
                        "rebuild with --overwrite")
