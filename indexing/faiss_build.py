"""Build ``faiss.index`` from the Parquet shards (the shards are the source of truth; the index is derived).

Vectors are added shard by shard with ``add_with_ids`` (the explicit int64 ``image_id``), so memory beyond the
index itself is one shard. IVF/PQ indexes are trained first on a deterministic uniform sample. With faiss GPU
support and ``--device`` allowing it, training and adding run on GPU 0 and the result is copied back to a
CPU index before saving, so every machine can load it. With ``shards`` > 1 the index is written as N faiss
shards (``faiss_shards/``) for sharded serving (engine/query: faiss ``IndexShards`` in one process, or one Ray
actor per shard).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from engine.errors import ConfigError, DataError
from indexing.calibrate import Calibration, calibrate
from indexing.choose import IndexSpec, choose_index, validate_factory
from engine.atomic import replace_atomically
from indexing.layout import FAISS_FILE, FAISS_SHARDS_DIR, FAISS_SHARD_PATTERN, faiss_shard_name
from indexing.shards import embeddings_of, read_columns, shard_files

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
    shard_files: tuple[str, ...] = ()  # relative paths of the faiss shards; empty = one faiss.index


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


def shard_ranges(total: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous [start, stop) row ranges over ``total`` rows, sizes differing by at most one."""
    bounds = [total * number // shards for number in range(shards + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _add_rows(index, files: list[Path], counts: list[int], start: int, stop: int) -> int:
    """Add rows ``start .. stop-1`` (in shard order) with their image ids; reads only the overlapping shards."""
    offset, added = 0, 0
    for file, count in zip(files, counts):
        low, high = max(start, offset) - offset, min(stop, offset + count) - offset
        if low < high:
            table = read_columns(file, ["image_id", "embedding"]).slice(low, high - low)
            ids = table.column("image_id").to_numpy().astype(np.int64)
            index.add_with_ids(np.ascontiguousarray(embeddings_of(table)), ids)
            added += len(ids)
        offset += count
    return added


def _trained_template(spec: IndexSpec, dim: int, files, counts, use_gpu: bool, trained_cache: Path | None):
    """The empty index, trained when its kind needs it. ``trained_cache`` (a folder) keeps trained quantisers
    across runs, one file per (factory, vector count, dim), so a killed 10 M-vector build does not train twice
    (bench/synthetic_index.py)."""
    import hashlib

    import faiss

    if trained_cache is not None:
        key = hashlib.sha256(f"{spec.factory}|{sum(counts)}|{dim}".encode()).hexdigest()[:16]
        trained_cache = trained_cache / f"trained-{key}.index"
        if trained_cache.is_file():
            return faiss.read_index(str(trained_cache))
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if not _supports_ids(index):
        index = faiss.IndexIDMap(index)
    _apply_build_params(index, spec.params)
    if not index.is_trained:
        nlist = spec.params.get("nlist", 1)
        sample_size = min(TRAIN_SAMPLE_MAX, max(TRAIN_SAMPLE_MIN, nlist * TRAIN_POINTS_PER_CENTROID))
        sample = _training_sample(files, counts, sample_size)
        resources = faiss.StandardGpuResources() if use_gpu else None
        trained, on_gpu = _on_gpu(index, resources)
        trained.train(sample)
        index = faiss.index_gpu_to_cpu(trained) if on_gpu else trained
        if trained_cache is not None:
            replace_atomically(trained_cache, lambda temp: faiss.write_index(index, str(temp)))
    return index


def _filled(template, files, counts, start: int, stop: int, use_gpu: bool):
    import faiss

    resources = faiss.StandardGpuResources() if use_gpu else None
    index, on_gpu = _on_gpu(faiss.clone_index(template), resources)
    added = _add_rows(index, files, counts, start, stop)
    if on_gpu:
        index = faiss.index_gpu_to_cpu(index)
    return index, added


def _on_gpu(index, resources):
    """(the index on GPU 0, True) when faiss can move this kind there (Flat, IVF), else (it unchanged, False):
    faiss has no GPU HNSW, and an HNSW build must not fail just because a GPU is present."""
    import faiss

    if resources is None:
        return index, False
    try:
        return faiss.index_cpu_to_gpu(resources, 0, index), True
    except RuntimeError:
        return index, False


def build_faiss(index_dir: Path, dim: int, memory_budget: int, override: str | None, device: str,
                shards: int = 1, trained_cache: Path | None = None) -> FaissBuild:
    """Choose, train, fill and save ``INDEX_DIR/faiss.index`` — or, with ``shards`` > 1, ``faiss_shards/part-K``
    files that each hold a contiguous run of the rows: every part is a copy of one trained empty index (same
    IVF quantiser), so searching all parts and merging the top-k (faiss ``IndexShards``) gives the unsharded
    index's answers for Flat and IVF indexes. The search knob is calibrated on the merged view."""
    import faiss

    start = time.perf_counter()
    files = shard_files(index_dir)
    counts = [pq.ParquetFile(file).metadata.num_rows for file in files]
    total = sum(counts)
    if shards < 1:
        raise ConfigError(f"--faiss-shards must be 1 or more, got {shards}")
    if shards > total:
        raise ConfigError(f"--faiss-shards {shards}: more faiss shards than the {total} vectors of the index; "
                          f"use at most {total}")
    if override:
        validate_factory(override, dim)
    spec = choose_index(total, dim, memory_budget, override)
    use_gpu = device != "cpu" and faiss_gpu_count() > 0
    template = _trained_template(spec, dim, files, counts, use_gpu, trained_cache)
    parts, seen = [], 0
    for low, high in shard_ranges(total, shards):
        part, added = _filled(template, files, counts, low, high, use_gpu)
        parts.append(part)
        seen += added
    index = parts[0] if shards == 1 else merged_view(parts)
    if index.ntotal != total or seen != total:
        raise DataError(f"{index_dir}: added {index.ntotal} vectors but the shards hold {total}")
    parameters = faiss.ParameterSpace()
    for name in ("nprobe", "efSearch"):
        if name in spec.params:
            parameters.set_index_parameter(index, name, spec.params[name])
    calibration = calibrate(index, index_dir)  # measured recall decides efSearch/nprobe, not a fixed default
    if calibration is not None:
        spec = replace(spec, params={**spec.params, calibration.parameter: calibration.value})
    names: tuple[str, ...] = ()
    if shards == 1:
        replace_atomically(index_dir / FAISS_FILE, lambda temp: faiss.write_index(index, str(temp)))
    else:
        names = tuple(faiss_shard_name(number) for number in range(shards))
        for name, part in zip(names, parts):
            replace_atomically(index_dir / name, lambda temp, part=part: faiss.write_index(part, str(temp)))
    _remove_other_layout(index_dir, names)
    return FaissBuild(spec=spec, count=total, seconds=time.perf_counter() - start,
                      device="cuda" if use_gpu else "cpu", calibration=calibration, shard_files=names)


def merged_view(parts: list):
    """One searchable index over ``parts`` (faiss ``IndexShards``: searched in parallel threads, top-k merged,
    the parts' own ids kept)."""
    import faiss

    view = faiss.IndexShards(parts[0].d, True, False)  # threaded, ids not renumbered
    for part in parts:
        view.add_shard(part)  # faiss's wrapper keeps a reference to each part
    return view


def _remove_other_layout(index_dir: Path, keep: tuple[str, ...]) -> None:
    """After writing one layout, drop the other's files (a single faiss.index or stale faiss shards)."""
    if keep:
        (index_dir / FAISS_FILE).unlink(missing_ok=True)
    folder = index_dir / FAISS_SHARDS_DIR
    if folder.is_dir():
        for file in folder.glob(FAISS_SHARD_PATTERN):
            if f"{FAISS_SHARDS_DIR}/{file.name}" not in keep:
                file.unlink()
        if not keep and not any(folder.iterdir()):
            folder.rmdir()


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
