"""``engine index --ray`` and Ray-served shards on a local 2-CPU Ray cluster, against the single-process path.

The cluster is started once for this module (``ray.init(num_cpus=2)``); no other test module imports Ray.
The model is the real ``tiny-test`` config (fixed-seed weights), so the Ray workers run the production loading
and encoding code, not a fake.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import indexing_fakes

ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (.ci/run installs it)")
faiss = pytest.importorskip("faiss")

from engine.errors import ConfigError  # noqa: E402
from indexing.build import IndexOptions, run_index  # noqa: E402
from indexing.loader import load_index  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, at import

IMAGES = 30
SHARD_SIZE = 8  # 4 shards, the last one short
MODEL = "tiny-test"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             object_store_memory=256 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A Karpathy dataset with explicit ids and captions, plus one corrupt image (skipped by both paths)."""
    root = tmp_path_factory.mktemp("ray-data") / "ds"
    indexing_fakes.write_karpathy(root, IMAGES, captions_per_image=2)
    corrupt = sorted((root / "images").iterdir())[5]
    corrupt.write_bytes(b"this is not an image")
    return root


def _options(data: Path, out: Path, **extra) -> IndexOptions:
    return IndexOptions(data_dir=data, out=out, model_spec=MODEL, shard_size=SHARD_SIZE, batch_size=4, workers=0,
                        **extra)


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "index"
    run_index(_options(dataset, out))
    return out


def _tables(out: Path, folder: str) -> dict[str, object]:
    return {file.name: pq.read_table(file) for file in sorted((out / folder).glob("part-*.parquet"))}


def assert_same_index(expected: Path, actual: Path) -> None:
    """Same shard files, same rows and ids in the same order, embeddings equal to 1e-5, same search results."""
    for folder in ("shards", "text_shards"):
        want, got = _tables(expected, folder), _tables(actual, folder)
        assert list(want) == list(got), folder
        for name in want:
            a, b = want[name], got[name]
            assert a.schema.metadata == b.schema.metadata, (folder, name)
            for column in a.column_names:
                if column == "embedding":
                    left = np.asarray(a.column(column).to_pylist(), np.float32)
                    right = np.asarray(b.column(column).to_pylist(), np.float32)
                    np.testing.assert_allclose(right, left, atol=TOLERANCE, rtol=0)
                else:
                    assert a.column(column).to_pylist() == b.column(column).to_pylist(), (folder, name, column)
    config_a, config_b = (json.loads((out / "index.json").read_text()) for out in (expected, actual))
    for key in ("factory", "image_count", "caption_count", "skipped_images", "shards", "model_fingerprint"):
        assert config_a[key] == config_b[key], key
    skipped = (expected / "skipped.jsonl").read_text()
    assert skipped.count("\n") >= 1 and skipped == (actual / "skipped.jsonl").read_text()
    queries = np.asarray(pq.read_table(expected / "text_shards").column("embedding").to_pylist(), np.float32)
    index_a, index_b = load_index(expected), load_index(actual)
    try:
        _, ids_a = index_a.index.search(queries, 5)
        _, ids_b = index_b.index.search(queries, 5)
        np.testing.assert_array_equal(ids_a, ids_b)
    finally:
        index_a.close()
        index_b.close()


def test_ray_index_equals_single_process_index_even_when_a_worker_dies_and_resumes(
        ray_cluster, dataset, single, tmp_path, monkeypatch) -> None:
    from indexing import ray_index

    # The first encoder actor dies (os._exit) after one batch, mid-shard: Ray Data restarts it and retries.
    marker = tmp_path / "died"
    monkeypatch.setattr(ray_index, "FAULT", {"marker": str(marker), "after_batches": 1})
    out = tmp_path / "ray"
    summary = run_index(_options(dataset, out, ray="auto"))
    assert marker.exists(), "the encoder actor was supposed to die once"
    assert summary.encoded == IMAGES - 1 and len(summary.skipped) == 1
    assert summary.shards_written == 4 and summary.captions_encoded == 2 * (IMAGES - 1)
    assert summary.stages.seconds["image encode"] > 0 and summary.stages.seconds["caption encode"] > 0
    ids = pq.read_table(out / "shards").column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == IMAGES - 1
    assert_same_index(single, out)
    # A driver killed before its last shard was written: that shard is missing, the rest stay and are reused.
    monkeypatch.setattr(ray_index, "FAULT", None)
    for folder in ("shards", "text_shards"):
        (out / folder / "part-00003.parquet").unlink()
    (out / "index.json").unlink()
    resumed = run_index(_options(dataset, out, ray="auto"))
    assert (resumed.shards_reused, resumed.shards_written) == (3, 1)
    assert_same_index(single, out)


def test_ray_served_shards_answer_like_the_unsharded_index(ray_cluster, dataset, tmp_path) -> None:
    from indexing.faiss_search import search_batch_selected, search_parameters

    whole, split = tmp_path / "whole", tmp_path / "split"
    run_index(_options(dataset, whole, factory="IVF2,Flat"))
    run_index(_options(dataset, split, factory="IVF2,Flat", faiss_shards=3))
    queries = np.asarray(pq.read_table(whole / "text_shards").column("embedding").to_pylist(), np.float32)
    unsharded, served = load_index(whole), load_index(split, shard_backend="ray")
    try:
        assert served.index.ntotal == unsharded.index.ntotal == IMAGES - 1
        assert len(served.index.actors) == 3
        scores_a, ids_a = unsharded.index.search(queries, 6)
        scores_b, ids_b = served.index.search(queries, 6)
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_allclose(scores_a, scores_b, atol=1e-6)
        allowed = np.sort(ids_a[:, 0][::2]).astype(np.int64)
        _, selected_a = search_batch_selected(unsharded.index, queries, 3, allowed)
        _, selected_b = search_batch_selected(served.index, queries, 3, allowed)
        np.testing.assert_array_equal(selected_a, selected_b)
        assert search_parameters(served.index) == search_parameters(unsharded.index)
        assert all(info["rss_bytes"] > 0 for info in served.index.memory())
    finally:
        unsharded.close()
        served.close()


def test_ray_append_on_another_models_index_is_refused_untouched(dataset, single, tmp_path, capsys) -> None:
    import shutil

    from engine.cli import main

    out = tmp_path / "other"
    shutil.copytree(single, out)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    code = main(["index", str(dataset), "--out", str(out), "--model", "offline-default", "--append", "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and "not of the requested model" in err and err.count("\n") == 1
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before


def test_unreachable_ray_address_fails_fast_with_one_line(dataset, tmp_path, capsys) -> None:
    from engine.cli import main

    code = main(["index", str(dataset), "--out", str(tmp_path / "out"), "--model", MODEL, "--ray", "127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach a Ray cluster" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="that is a path"):
        run_index(_options(dataset, tmp_path / "out", ray=str(dataset)))


def test_ray_index_of_a_geotiff_scene_equals_single_process(ray_cluster, tmp_path) -> None:
    """Chips of one scene are separate decode tasks on the Ray path; rows and footprints match the single path."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    from engine.data.geo_scenes import GeoOptions

    scene = tmp_path / "scene_20200101.tif"
    data = np.random.default_rng(0).integers(1, 250, (4, 64, 96)).astype(np.uint8)
    with rasterio.open(scene, "w", driver="GTiff", width=96, height=64, count=4, dtype="uint8", crs="EPSG:26914",
                       transform=from_origin(485_000.0, 5_209_000.0, 10.0, 10.0)) as handle:
        handle.write(data)
    geo = GeoOptions(chip_size=32)
    run_index(_options(scene, tmp_path / "single", geo=geo))
    run_index(_options(scene, tmp_path / "ray", geo=geo, ray="auto", ray_workers=1))
    columns = ["image_id", "col_off", "row_off", "lon_min", "lat_max", "embedding"]
    single = pq.read_table(tmp_path / "single" / "shards", columns=columns).sort_by("image_id")
    distributed = pq.read_table(tmp_path / "ray" / "shards", columns=columns).sort_by("image_id")
    assert single.num_rows == distributed.num_rows == 6
    for name in columns[:-1]:
        assert single.column(name).to_pylist() == distributed.column(name).to_pylist()
    np.testing.assert_allclose(np.asarray(single.column("embedding").to_pylist()),
                               np.asarray(distributed.column("embedding").to_pylist()), atol=TOLERANCE)
