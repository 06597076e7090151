"""rows.arrow: by-id reads equal the shards' rows, the file follows shard changes, read-only folders fall back."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine.atomic import write_table_atomic
from indexing.layout import ROWS_FILE, SHARDS_DIR, shard_name
from indexing.row_store import RowStore
from indexing.shards import ImageRows, embeddings_of, image_table, read_columns

DIM = 4


def write_shard(index_dir: Path, number: int, ids: list[int], seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((len(ids), DIM)).astype(np.float32)
    rows = ImageRows(image_id=ids, source_id=ids, path=[f"img/{i}.png" for i in ids], split=["test"] * len(ids),
                     label=[f"class{i % 3}" for i in ids], captions=[[f"caption of {i}"] * (i % 3) for i in ids],
                     width=[8] * len(ids), height=[8] * len(ids), embeddings=list(vectors))
    write_table_atomic(index_dir / SHARDS_DIR / shard_name(number), image_table(rows, DIM, {"data_root": "/data"}))
    return vectors


@pytest.fixture()
def index_dir(tmp_path: Path) -> Path:
    (tmp_path / SHARDS_DIR).mkdir()
    write_shard(tmp_path, 0, [10, 11, 12, 13], seed=0)
    write_shard(tmp_path, 1, [40, 41, 30], seed=1)  # ids need not be sorted or contiguous
    return tmp_path


def naive_rows(index_dir: Path) -> dict[int, dict]:
    rows = {}
    for file in sorted((index_dir / SHARDS_DIR).glob("*.parquet")):
        table = read_columns(file, ["image_id", "path", "label", "captions", "embedding"])
        vectors = embeddings_of(table)
        for position, record in enumerate(table.drop_columns(["embedding"]).to_pylist()):
            record["embedding"] = vectors[position]
            rows[record["image_id"]] = record
    return rows


def test_take_returns_requested_rows_in_order_across_batches(index_dir: Path):
    store = RowStore.open(index_dir)
    assert store is not None and (index_dir / ROWS_FILE).is_file()
    wanted = np.array([41, 10, 999, 30, 13])  # 999 is unknown and left out
    table = store.take(wanted, ["image_id", "path", "label", "captions"])
    reference = naive_rows(index_dir)
    assert table.column("image_id").to_pylist() == [41, 10, 30, 13]
    for record in table.to_pylist():
        expected = reference[record["image_id"]]
        assert (record["path"], record["label"], record["captions"]) == \
            (expected["path"], expected["label"], expected["captions"])
    assert store.take(np.array([999]), ["path"]).num_rows == 0


def test_embeddings_match_shards_in_id_order(index_dir: Path):
    store = RowStore.open(index_dir)
    found, matrix = store.embeddings(np.array([41, 12, 30, 12]))
    reference = naive_rows(index_dir)
    assert found.tolist() == [12, 30, 41]
    np.testing.assert_array_equal(matrix, np.stack([reference[i]["embedding"] for i in (12, 30, 41)]))


def test_file_is_rebuilt_when_shards_change(index_dir: Path):
    assert RowStore.open(index_dir).take(np.array([50]), ["path"]).num_rows == 0
    write_shard(index_dir, 2, [50, 51], seed=2)  # an --append
    store = RowStore.open(index_dir)
    assert store.take(np.array([50]), ["path"]).column("path").to_pylist() == ["img/50.png"]


def test_truncated_file_is_rebuilt(index_dir: Path):
    RowStore.open(index_dir)
    path = index_dir / ROWS_FILE
    path.write_bytes(path.read_bytes()[:100])
    assert RowStore.open(index_dir).take(np.array([11]), ["image_id"]).num_rows == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_without_row_file_falls_back(index_dir: Path):
    index_dir.chmod(0o555)
    try:
        assert RowStore.open(index_dir) is None
        assert not list(index_dir.glob(".*"))  # no temp file left behind
    finally:
        index_dir.chmod(0o755)


def test_unwritable_row_file_falls_back_to_the_catalog_with_the_same_answers(index_dir: Path, monkeypatch):
    from types import SimpleNamespace

    import indexing.row_store as row_store
    from engine.errors import EngineError
    from engine.query.metadata import MetadataStore
    from indexing.catalog import Catalog

    config = SimpleNamespace(shards=[])
    mapped = MetadataStore(Catalog(index_dir), config)
    assert mapped.rows is not None
    (index_dir / ROWS_FILE).unlink()

    def refuse(path, write):
        raise EngineError(f"cannot write {path}: permission denied")

    monkeypatch.setattr(row_store, "replace_atomically", refuse)
    catalog_only = MetadataStore(Catalog(index_dir), config)
    assert catalog_only.rows is None and not (index_dir / ROWS_FILE).exists()
    ids = [41, 10, 30]
    assert mapped.rows_for(ids) == catalog_only.rows_for(ids)
    for got, expected in zip(mapped.embeddings_for(np.array(ids)), catalog_only.embeddings_for(np.array(ids))):
        np.testing.assert_array_equal(got, expected)


def test_slice_path_and_batch_take_path_agree(index_dir: Path, monkeypatch):
    """Few ids are read by one zero-copy slice per row, many by a take per batch: the same rows either way."""
    import indexing.row_store as row_store

    store = RowStore.open(index_dir)
    wanted = np.array([30, 12, 41, 999, 10, 12])  # repeats and unknown ids too
    columns = ["image_id", "path", "captions"]
    sliced = store.take(wanted, columns).to_pylist()
    monkeypatch.setattr(row_store, "SLICE_ROWS_MAX", 0)
    assert store.take(wanted, columns).to_pylist() == sliced
    assert [row["image_id"] for row in sliced] == [30, 12, 41, 10, 12]
