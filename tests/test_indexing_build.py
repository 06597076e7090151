"""engine index end to end on generated data with a tiny random encoder: shards, ids, catalog, append, refusals."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import indexing_fakes
from engine.cli import main
from engine.errors import ConfigError, EngineError

faiss = pytest.importorskip("faiss")


@pytest.fixture(autouse=True)
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    import encoders

    monkeypatch.setattr(encoders, "load_model", indexing_fakes.fake_load_model, raising=False)


def run(*argv: str) -> int:
    return main(["index", *argv])


def build(data: Path, out: Path, *extra: str) -> int:
    return run(str(data), "--out", str(out), "--model", "fake-1", "--workers", "0", "--shard-size", "4", *extra)


@pytest.fixture()
def karpathy(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    indexing_fakes.write_karpathy(root, 10)
    return root


def test_shards_schema_ids_and_metadata(karpathy: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    assert build(karpathy, out) == 0
    files = sorted((out / "shards").glob("part-*.parquet"))
    assert [file.name for file in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = pq.read_table(out / "shards")
    schema = pq.read_schema(files[0])
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[8]"
    assert schema.field("image_id").type == "int64"
    assert schema.metadata[b"engine.mask_mode"] == b"none"
    assert table.column("image_id").to_pylist() == list(range(100, 110))  # the dataset's explicit ids
    assert table.column("path").to_pylist()[0] == "images/tile_0000.png"
    assert table.column("split").to_pylist()[:3] == ["train", "val", "test"]
    assert table.column("captions").to_pylist()[1] == ["tile 1 caption 0 river", "tile 1 caption 1 river"]
    assert set(table.column("width").to_pylist()) == {20}
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    texts = pq.read_table(out / "text_shards")
    assert texts.num_rows == 20 and texts.column("caption_id").to_pylist()[:2] == [1000, 1001]
    config = json.loads((out / "index.json").read_text())
    assert config["image_count"] == 10 and config["caption_count"] == 20 and config["factory"] == "IDMap,Flat"
    assert [(s["first_id"], s["last_id"]) for s in config["shards"]] == [(100, 103), (104, 107), (108, 109)]
    assert config["mask"] == {"mode": "none", "sigma": None, "masks_dir": None}


def test_loader_search_and_model_check(karpathy: Path, tmp_path: Path) -> None:
    from indexing import load_index

    out = tmp_path / "index"
    assert build(karpathy, out) == 0
    loaded = load_index(out)
    table = pq.read_table(out / "shards", columns=["image_id", "embedding"])
    query = np.asarray(table.column("embedding").to_pylist()[3:4], dtype=np.float32)
    scores, ids = loaded.index.search(query, 1)
    assert ids[0, 0] == 103 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    loaded.check_model(indexing_fakes.fake_load_model("fake-1"))
    with pytest.raises(ConfigError, match="built with model .* but the loaded model is"):
        loaded.check_model(indexing_fakes.fake_load_model("fake-2"))


def test_catalog_lookup_filter_stats_and_sql_error(karpathy: Path, tmp_path: Path, capsys) -> None:
    from indexing.catalog import Catalog

    out = tmp_path / "index"
    assert build(karpathy, out) == 0
    catalog = Catalog(out)
    rows = catalog.lookup([105, 101, 999])
    assert [row.image_id for row in rows] == [105, 101] and rows[0].label == "river"
    assert catalog.filter_ids("split = 'test' AND label = 'farm'").tolist() == [102, 108]
    with pytest.raises(EngineError, match="unknown column .nonexistent_column"):
        catalog.filter_ids("nonexistent_column = 1")
    with pytest.raises(EngineError, match="no ';'"):
        catalog.filter_ids("1=1; DROP VIEW images")
    capsys.readouterr()
    assert run("stats", str(out), "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == {"images": 10, "captions": 20, "per_split": {"test": 3, "train": 4, "val": 3},
                     "per_class": {"farm": 5, "river": 5}}


def test_unreadable_image_skipped_and_counted(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "plain"
    indexing_fakes.write_images(folder, 6)
    (folder / "img_0002.png").write_bytes(b"not a png")
    out = tmp_path / "index"
    assert build(folder, out) == 0
    err = capsys.readouterr().err
    assert "skipped unreadable image" in err and "img_0002.png" in err and "skipped unreadable: 1" in err
    assert pq.read_table(out / "shards").num_rows == 5
    assert json.loads((out / "index.json").read_text())["skipped_images"] == 1


def test_append_with_duplicates_and_new_ids(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "plain"
    indexing_fakes.write_images(folder, 5)
    out = tmp_path / "index"
    assert build(folder, out) == 0
    first_ids = pq.read_table(out / "shards").column("image_id").to_pylist()
    indexing_fakes.write_images(folder, 3, seed=1, prefix="new")
    capsys.readouterr()
    assert build(folder, out, "--append") == 0
    assert "duplicate paths skipped: 5" in capsys.readouterr().err
    table = pq.read_table(out / "shards")
    ids = table.column("image_id").to_pylist()
    assert ids[:5] == first_ids and len(set(ids)) == 8
    assert min(ids[5:]) > max(first_ids)
    assert sorted(table.column("path").to_pylist()[5:]) == ["new_0000.png", "new_0001.png", "new_0002.png"]
    assert faiss.read_index(str(out / "faiss.index")).ntotal == 8


def test_rerun_of_complete_index_is_a_no_op_and_other_root_needs_append(karpathy: Path, tmp_path: Path,
                                                                         capsys) -> None:
    out = tmp_path / "index"
    assert build(karpathy, out) == 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert build(karpathy, out) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    other = tmp_path / "other"
    indexing_fakes.write_images(other, 2)
    assert build(other, out) == 2
    assert "pass --append" in capsys.readouterr().err


def test_refuses_index_of_another_model_unless_overwrite(karpathy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "index"
    assert build(karpathy, out) == 0
    capsys.readouterr()
    code = run(str(karpathy), "--out", str(out), "--model", "fake-2", "--workers", "0")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "fake-1" in err and "fake-2" in err and "--overwrite" in err
    assert err.count("\n") == 1
    assert run(str(karpathy), "--out", str(out), "--model", "fake-2", "--workers", "0", "--overwrite") == 0
    assert json.loads((out / "index.json").read_text())["model_spec"] == "fake-2"


def test_refuses_folder_with_foreign_files(karpathy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "index"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert build(karpathy, out) == 2
    assert "not part of an index (notes.txt)" in capsys.readouterr().err


def test_bad_factory_is_one_line(karpathy: Path, tmp_path: Path, capsys) -> None:
    assert build(karpathy, tmp_path / "index", "--index", "IVFzz,Flat") == 2
    err = capsys.readouterr().err
    assert "is not a valid faiss factory string" in err and err.count("\n") == 1
    assert not (tmp_path / "index").exists()


def test_ivf_override_trains_and_keeps_ids(karpathy: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    assert build(karpathy, out, "--index", "IVF2,Flat") == 0
    index = faiss.read_index(str(out / "faiss.index"))
    config = json.loads((out / "index.json").read_text())
    calibration = config["calibration"]
    assert calibration["parameter"] == "nprobe" and calibration["query_source"] == "captions"
    assert calibration["reached"] and calibration["recall"] >= 0.95
    # the saved index searches with the calibrated setting, and index.json says so
    assert index.ntotal == 10 and config["index_params"]["nprobe"] == calibration["value"]
    assert faiss.extract_index_ivf(index).nprobe == calibration["value"]
    vectors = np.asarray(pq.read_table(out / "shards").column("embedding").to_pylist(), np.float32)
    faiss.extract_index_ivf(index).nprobe = 2
    assert index.search(vectors[:1], 1)[1][0, 0] == 100


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_error_is_clean(karpathy: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "index"
    (out / "shards").mkdir(parents=True)
    (out / "shards").chmod(0o500)
    try:
        assert build(karpathy, out) == 2
    finally:
        (out / "shards").chmod(0o700)
    err = capsys.readouterr().err
    assert "cannot write" in err and "permission denied" in err and err.count("\n") == 1
    assert not [p for p in (out / "shards").iterdir()]


@pytest.mark.parametrize(("code", "message"), [(28, "no space left on device"), (13, "permission denied (is the folder writable?)")])
def test_disk_full_or_permission_during_shard_write_leaves_nothing(karpathy: Path, tmp_path: Path, capsys,
                                                                   monkeypatch: pytest.MonkeyPatch, code: int,
                                                                   message: str) -> None:
    """The writer fails half-way (as a full disk would); the temp file is removed and no shard appears."""
    import indexing.shards as shards

    real_write = shards.pq.write_table

    def failing_write(table, where, **kwargs):
        real_write(table, where, **kwargs)  # leave a real partial file behind, then fail
        if "/shards/.part-00001.parquet" in str(where):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(shards.pq, "write_table", failing_write)
    out = tmp_path / "index"
    assert build(karpathy, out) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: cannot write {out / 'shards' / 'part-00001.parquet'}: {message}\n")
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["part-00000.parquet"]  # no temp, no part-1
    assert not (out / "index.json").exists()


def test_test_time_views_are_recorded_applied_and_must_be_repeated(karpathy: Path, tmp_path: Path, capsys) -> None:
    import torch
    from PIL import Image

    from encoders.views import view_averaged

    out = tmp_path / "index"
    assert build(karpathy, out, "--test-time-views", "2") == 0
    assert json.loads((out / "index.json").read_text())["test_time_views"] == 2
    table = pq.read_table(out / "shards", columns=["image_id", "embedding"])
    stored = np.asarray(table.column("embedding").to_pylist()[0], dtype=np.float32)
    fake = indexing_fakes.fake_load_model("fake-1")
    pixels = fake.image_transform()(Image.open(karpathy / "images" / "tile_0000.png"))
    with torch.no_grad():
        two = view_averaged(fake._encode_view, pixels.unsqueeze(0), 2)[0].numpy()
        one = fake._encode_view(pixels.unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(stored, two, atol=1e-6)
    assert np.abs(stored - one).max() > 1e-3
    capsys.readouterr()
    assert build(karpathy, out) == 2  # the model's own setting is 1: refused, naming what to repeat
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--test-time-views 2" in err and err.count("\n") == 1
    assert build(karpathy, out, "--test-time-views", "2") == 0  # repeating it is an up-to-date no-op
    assert build(karpathy, tmp_path / "bad", "--test-time-views", "9") == 2
    assert "vision.test_time_views must be 1..8" in capsys.readouterr().err and not (tmp_path / "bad").exists()
