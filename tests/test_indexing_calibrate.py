"""Search-knob calibration: exact neighbours match a naive reference and the cheapest setting reaching the
target recall is the one kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.atomic import write_table_atomic
from indexing.calibrate import NO_ID, calibrate, exact_neighbours, search_knob
from indexing.layout import SHARDS_DIR, TEXT_SHARDS_DIR, shard_name
from indexing.shards import ImageRows, TextRows, image_table, text_table

DIM = 16


def clustered(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    vectors = centres[rng.integers(0, 20, count)] + 0.6 * rng.standard_normal((count, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write_index_shards(folder: Path, vectors: np.ndarray, shard_rows: int, captions: np.ndarray | None = None):
    (folder / SHARDS_DIR).mkdir(parents=True)
    for number, start in enumerate(range(0, len(vectors), shard_rows)):
        ids = list(range(1000 + start, 1000 + min(start + shard_rows, len(vectors))))  # ids ≠ positions
        rows = ImageRows(image_id=ids, source_id=ids, path=[f"{i}.png" for i in ids], split=[None] * len(ids),
                         label=[None] * len(ids), captions=[[] for _ in ids], width=[1] * len(ids),
                         height=[1] * len(ids), embeddings=list(vectors[start:start + len(ids)]))
        write_table_atomic(folder / SHARDS_DIR / shard_name(number), image_table(rows, DIM, {}))
    if captions is not None:
        texts = TextRows(caption_id=list(range(len(captions))), image_id=[1000] * len(captions),
                         text=["t"] * len(captions), embeddings=captions)
        write_table_atomic(folder / TEXT_SHARDS_DIR / shard_name(0), text_table(texts, DIM, {}))


def naive_neighbours(vectors: np.ndarray, queries: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    ids = np.arange(1000, 1000 + len(vectors))
    result = []
    for query, own in zip(queries, exclude):
        scores = vectors @ query
        scores[ids == own] = -np.inf
        result.append(ids[np.argsort(-scores, kind="stable")[:k]])
    return np.array(result)


def test_exact_neighbours_streamed_over_shards_match_naive(tmp_path: Path):
    vectors = clustered(700, seed=1)
    write_index_shards(tmp_path, vectors, shard_rows=300)
    queries = vectors[[3, 400, 699]]
    exclude = np.array([1003, NO_ID, 1699])
    np.testing.assert_array_equal(exact_neighbours(tmp_path, queries, exclude, 10),
                                  naive_neighbours(vectors, queries, exclude, 10))


@pytest.mark.parametrize("factory", ["HNSW8", "IVF16,Flat"])
def test_calibration_keeps_cheapest_setting_reaching_target(tmp_path: Path, factory: str):
    import faiss

    vectors = clustered(3000, seed=2)
    captions = clustered(300, seed=3)
    write_index_shards(tmp_path, vectors, shard_rows=1000, captions=captions)
    index = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    if not factory.startswith("IVF"):
        index = faiss.IndexIDMap(index)
    index.train(vectors)
    index.add_with_ids(vectors, np.arange(1000, 4000))
    result = calibrate(index, tmp_path, target=0.97)
    assert result is not None and result.query_source == "captions" and result.queries == 256
    name, ladder = search_knob(index)
    assert result.parameter == name and result.reached and result.recall >= 0.97
    position = ladder.index(result.value)
    assert all(result.tried[value] < 0.97 for value in ladder[:position])
    # the reported recall is the one a naive reference measures with the setting left on the index
    truth_ids = naive_neighbours(vectors, captions, np.full(len(captions), NO_ID), 10)
    _, found = index.search(captions, 10)
    rows = np.sort(np.random.default_rng(0).choice(300, 256, replace=False))
    naive = np.mean([len(set(found[r]) & set(truth_ids[r])) / 10 for r in rows])
    assert result.recall == pytest.approx(naive, abs=1e-4)


def test_image_queries_leave_themselves_out_and_exact_index_is_not_tuned(tmp_path: Path):
    import faiss

    vectors = clustered(500, seed=4)
    write_index_shards(tmp_path, vectors, shard_rows=500)
    hnsw = faiss.IndexIDMap(faiss.index_factory(DIM, "HNSW8", faiss.METRIC_INNER_PRODUCT))
    hnsw.add_with_ids(vectors, np.arange(1000, 1500))
    result = calibrate(hnsw, tmp_path)
    assert result.query_source == "images (leave-one-out)" and result.queries == 256
    flat = faiss.IndexIDMap(faiss.index_factory(DIM, "Flat", faiss.METRIC_INNER_PRODUCT))
    flat.add_with_ids(vectors, np.arange(1000, 1500))
    assert calibrate(flat, tmp_path) is None


def test_build_applies_ef_construction_and_records_calibrated_ef_search(tmp_path: Path):
    """index.json's efConstruction is the one the graph was built with (faiss's own default is 40)."""
    import faiss

    from indexing.faiss_build import build_faiss

    write_index_shards(tmp_path, clustered(2000, seed=5), shard_rows=1000, captions=clustered(100, seed=6))
    built = build_faiss(tmp_path, DIM, 2**30, "IDMap,HNSW16", "cpu")
    saved = faiss.read_index(str(tmp_path / "faiss.index"))
    hnsw = faiss.downcast_index(saved.index).hnsw
    assert hnsw.efConstruction == built.spec.params["efConstruction"] == 80
    assert hnsw.efSearch == built.spec.params["efSearch"] == built.calibration.value
