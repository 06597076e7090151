"""A faiss part split into N shards (``engine index --faiss-shards N``) answers like the unsharded index.

In-process serving (faiss ``IndexShards``) here; the Ray backend (one actor per shard) is tested against the
same unsharded answers in tests/test_ray_index.py. No Ray is started in this module.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import indexing_fakes
from query_fixtures import build_query_index

faiss = pytest.importorskip("faiss")

from engine.errors import ConfigError  # noqa: E402
from indexing.faiss_search import search_batch_selected, search_parameters  # noqa: E402
from indexing.build import IndexOptions, run_index  # noqa: E402
from indexing.loader import load_index  # noqa: E402

IMAGES = 60


@pytest.fixture(autouse=True)
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    import encoders

    monkeypatch.setattr(encoders, "load_model", indexing_fakes.fake_load_model)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faiss-shards") / "ds"
    indexing_fakes.write_karpathy(root, IMAGES, captions_per_image=1)
    return root


def _options(data: Path, out: Path, **extra) -> IndexOptions:
    return IndexOptions(data_dir=data, out=out, model_spec="fake-2", shard_size=16, batch_size=8, workers=0, **extra)


@pytest.mark.parametrize("factory", ["IDMap,Flat", "IVF4,Flat"])
def test_sharded_index_answers_like_the_unsharded_one(dataset, tmp_path, factory) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_index(_options(dataset, whole, factory=factory))
    shutil.copytree(whole, split)
    summary = run_index(_options(dataset, split, factory=factory, faiss_shards=3))  # re-split, no re-encoding
    assert summary.faiss_shards == 3 and summary.encoded == 0 and "in 3 faiss shards" in summary.lines()[0]
    config = json.loads((split / "index.json").read_text())
    assert config["faiss_shards"] == [f"faiss_shards/part-00{n}.index" for n in range(3)]
    assert not (split / "faiss.index").exists()
    counts = [faiss.read_index(str(split / name)).ntotal for name in config["faiss_shards"]]
    assert counts == [20, 20, 20]
    queries = np.asarray(pq.read_table(whole / "text_shards").column("embedding").to_pylist(), np.float32)
    a, b = load_index(whole), load_index(split)
    try:
        assert isinstance(b.index, faiss.IndexShards) and b.index.ntotal == IMAGES
        scores_a, ids_a = a.index.search(queries, 7)
        scores_b, ids_b = b.index.search(queries, 7)
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_allclose(scores_a, scores_b, atol=1e-6)
        allowed = np.arange(100, 100 + IMAGES, 3, dtype=np.int64)
        np.testing.assert_array_equal(search_batch_selected(a.index, queries, 4, allowed)[1],
                                      search_batch_selected(b.index, queries, 4, allowed)[1])
        assert search_parameters(a.index) == search_parameters(b.index)
        assert json.loads((whole / "index.json").read_text())["calibration"] == config["calibration"]
    finally:
        a.close()
        b.close()
    run_index(_options(dataset, split, factory=factory))  # back to one file: the shard files go
    assert (split / "faiss.index").exists() and not (split / "faiss_shards").exists()
    assert json.loads((split / "index.json").read_text())["faiss_shards"] == []


def test_more_faiss_shards_than_images_is_refused_before_anything_is_written(dataset, tmp_path, capsys) -> None:
    from engine.cli import main

    out = tmp_path / "index"
    code = main(["index", str(dataset), "--out", str(out), "--model", "fake-2", "--faiss-shards", str(IMAGES + 1)])
    err = capsys.readouterr().err
    assert code == 2 and f"more faiss shards than the {IMAGES} images" in err and err.count("\n") == 1
    assert not out.exists()
    with pytest.raises(ConfigError, match="--faiss-shards must be 1 or more"):
        run_index(_options(dataset, out, faiss_shards=0))


def test_query_engine_over_a_sharded_index_returns_the_same_hits(tmp_path_factory, tmp_path, monkeypatch) -> None:
    import encoders

    from engine.cli import main
    from engine.query.request import QueryRequest
    from engine.query.engine import QueryEngine

    monkeypatch.undo()  # the real tiny-test checkpoint, not the fake encoder
    assert encoders.load_model is not indexing_fakes.fake_load_model
    index_dir, model_dir, data_dir = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    split = tmp_path / "split"
    shutil.copytree(index_dir, split)
    assert main(["index", str(data_dir), "--out", str(split), "--model", str(model_dir), "--workers", "0",
                 "--faiss-shards", "2"]) == 0
    with pytest.raises(ConfigError, match="--shard-backend must be one of local, ray"):
        QueryEngine(split, device="cpu", shard_backend="spark")
    engines = [QueryEngine(index_dir, device="cpu"), QueryEngine(split, device="cpu")]
    try:
        for request in (QueryRequest(text="a river tile", k=5), QueryRequest(text="farm", k=3, where="split = 'train'")):
            hits = [[(hit.image_id, round(hit.score, 5)) for hit in engine.search(request).hits] for engine in engines]
            assert hits[0] == hits[1] and hits[0]
    finally:
        for engine in engines:
            engine.close()


def test_ray_flag_without_ray_installed_says_how_to_install(dataset, tmp_path, monkeypatch, capsys) -> None:
    from engine.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    code = main(["index", str(dataset), "--out", str(tmp_path / "out"), "--model", "fake-2", "--ray"])
    err = capsys.readouterr().err
    assert code == 2 and "Ray is not installed" in err and 'pip install -e ".[ray]"' in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
