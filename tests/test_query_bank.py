"""Querybank normalisation: the offsets against a naive formula, the bank file's checks, the deep-enough search
against brute force, and `engine query-bank` / `engine eval` / `engine query` end to end on a tiny index."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from encoders.query_bank import BANK_FILE, QueryBank, bank_offsets, read_bank, save_bank
from engine.cli import main as engine_main
from engine.errors import ConfigError
from engine.query.bank_offsets import BankOffsets, normalised_top_k
from engine.query.search import Neighbours
from query_fixtures import build_query_index


def _unit(rng, rows: int, dim: int) -> np.ndarray:
    values = rng.normal(size=(rows, dim)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def test_offsets_match_the_formula_across_bank_chunks():
    rng = np.random.default_rng(0)
    gallery, bank = _unit(rng, 7, 16), _unit(rng, 5000, 16)  # more than one 4,096-row chunk
    weights = rng.integers(1, 6, size=len(bank)).astype(np.float64)
    beta = 10.0
    naive = np.array([np.log(np.sum(weights * np.exp(beta * (bank.astype(np.float64) @ g)))) / beta
                      for g in gallery.astype(np.float64)])
    np.testing.assert_allclose(bank_offsets(gallery, bank, beta, np.log(weights)), naive, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="beta"):
        bank_offsets(gallery, bank, 0.0)  # noqa


def test_normalised_top_k_is_exact_however_deep_it_must_search():
    rng = np.random.default_rng(1)
    gallery = _unit(rng, 500, 8)
    ids = np.arange(1000, 1500, dtype=np.int64)
    # wide offsets: the normalised best are often far down the plain ranking, so the search has to go deeper
    offsets = BankOffsets(ids, rng.uniform(-0.8, 0.8, size=len(ids)).astype(np.float32))
    depths = []

    def search_for(query):
        def search(depth):
            depths.append(depth)
            scores = gallery @ query
            order = np.lexsort((ids, -scores))[:depth]
            return Neighbours(ids[order], scores[order].astype(np.float32), "faiss")
        return search

    for query in _unit(rng, 20, 8):
        found = normalised_top_k(search_for(query), 10, len(ids), offsets)
        truth = gallery @ query - offsets.of(ids)
        expected = ids[np.lexsort((ids, -truth))[:10]]
        assert found.ids.tolist() == expected.tolist()
        np.testing.assert_allclose(found.scores, np.sort(truth)[::-1][:10], atol=1e-6)
    assert max(depths) > min(depths)  # some queries needed a deeper search than the first one


def _bank(dim: int = 4, fingerprint: str = "f" * 64, images: bool = True) -> QueryBank:
    rng = np.random.default_rng(2)
    return QueryBank(_unit(rng, 6, dim), np.log(np.arange(1, 7, dtype=np.float64)),
                     _unit(rng, 5, dim) if images else None, 10.0, fingerprint, "test")


def test_bank_file_round_trip_and_refusals(tmp_path):
    assert read_bank(tmp_path, "f" * 64, 4) is None  # no bank: plain cosine
    save_bank(_bank(), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / BANK_FILE).stat().st_mode & 0o777 == 0o666 & ~umask  # the usual modes, not safetensors' 0600
    loaded = read_bank(tmp_path, "f" * 64, 4)
    np.testing.assert_allclose(loaded.texts, _bank().texts, atol=1e-3)  # stored in float16
    np.testing.assert_allclose(loaded.images, _bank().images, atol=1e-3)
    assert loaded.text_to_image and loaded.image_to_text
    assert loaded.beta == 10.0 and loaded.digest() == read_bank(tmp_path, "f" * 64, 4).digest()
    with pytest.raises(ConfigError, match="embedded by model ffffffffffffffff…, not this folder's model"):
        read_bank(tmp_path, "0" * 64, 4)
    with pytest.raises(ConfigError, match="do not fit a model of embedding width 8"):
        read_bank(tmp_path, "f" * 64, 8)
    save_bank(_bank(images=False), tmp_path)  # one direction only: the other's offsets are zero
    captions_only = read_bank(tmp_path, "f" * 64, 4)
    assert captions_only.text_to_image and not captions_only.image_to_text
    assert not captions_only.text_offsets(_bank().images).any()
    (tmp_path / BANK_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="unreadable query bank"):
        read_bank(tmp_path, "f" * 64, 4)


@pytest.fixture(scope="module")
def banked(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(index, model without a bank, the same model with one, data) over the shared tiny query index."""
    index_dir, model_dir, data_dir = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    copy = tmp_path_factory.mktemp("bank") / "model"
    shutil.copytree(model_dir, copy)
    assert engine_main(["query-bank", str(copy), str(data_dir), "--beta", "10"]) == 0
    return index_dir, model_dir, copy, data_dir


def test_query_bank_holds_the_train_captions_only(banked):
    _, _, model_dir, data_dir = banked
    import encoders

    bank = encoders.load_model(model_dir).query_bank
    entries = json.loads((data_dir / "dataset.json").read_text())["images"]
    train = {s["raw"] for e in entries if e["split"] == "train" for s in e["sentences"]}
    train_images = sum(e["split"] == "train" for e in entries)
    assert len(bank.texts) == len(train) and len(bank.images) == train_images
    assert bank.beta == 10.0 and "train" in bank.sources


def test_search_ranks_by_cosine_minus_offset(banked):
    index_dir, plain_dir, model_dir, data_dir = banked
    from PIL import Image

    from engine.query.engine import QueryEngine
    from engine.query.request import QueryRequest

    engine = QueryEngine(index_dir, checkpoint=str(model_dir))
    plain = QueryEngine(index_dir, checkpoint=str(model_dir), query_bank=False)
    try:
        ids = engine.store.image_ids()
        found, stored = engine.store.embeddings_for(ids)
        offsets = engine.model.query_bank.image_offsets(stored)
        for text in ("a river tile", "a farm tile number 3"):
            query = engine.encode_text(text, [])
            truth = stored @ query - offsets
            order = np.lexsort((found, -truth))[:5]
            hits = engine.search(QueryRequest(text=text, k=5)).hits
            assert [h.image_id for h in hits] == found[order].tolist()
            np.testing.assert_allclose([h.score for h in hits], truth[order], atol=1e-5)
            cosine = stored @ query
            plain_hits = plain.search(QueryRequest(text=text, k=5)).hits
            np.testing.assert_allclose([h.score for h in plain_hits], np.sort(cosine)[::-1][:5], atol=1e-5)
        filtered = engine.search(QueryRequest(text="a river tile", k=3, where="split = 'test'")).hits
        assert len(filtered) == 3  # the filtered (exact subset) path normalises too
        # image→text (--target captions): minus each caption's offset from the bank's images
        caption_ids, _, _, matrix, _ = engine.caption_matrix()
        caption_offsets = engine.model.query_bank.text_offsets(matrix)
        assert np.ptp(caption_offsets) > 0
        image = Image.open(next((data_dir / "images").iterdir())).convert("RGB")
        vector = engine.encode_pixels(engine.transform(image).unsqueeze(0))[0]
        truth = matrix @ vector - caption_offsets
        order = np.lexsort((np.arange(len(truth)), -truth))[:5]
        hits = engine.search(QueryRequest(image=image, target="captions", k=5)).hits
        assert [h.caption_id for h in hits] == caption_ids[order].tolist()
        np.testing.assert_allclose([h.score for h in hits], truth[order], atol=1e-5)
    finally:
        engine.close()
        plain.close()


def test_eval_normalises_both_directions(banked, tmp_path):
    _, _, model_dir, data_dir = banked
    outs = {}
    for name, flags in (("bank", []), ("plain", ["--no-query-bank"])):
        outs[name] = tmp_path / f"{name}.json"
        assert engine_main(["eval", str(data_dir), "--split", "train", "--model", str(model_dir),
                            "--out", str(outs[name]), *flags]) == 0
    bank, plain = (json.loads(outs[name].read_text()) for name in ("bank", "plain"))
    assert bank["settings"]["query_bank"]["beta"] == 10.0 and plain["settings"]["query_bank"] is None
    # the naive reference: ranks under cosine − the gallery item's offset, both ways (ties: the earlier item first)
    import encoders
    from engine.data import load_dataset
    from engine.evaluation.embed import embed_split

    model = encoders.load_model(model_dir)
    emb = embed_split(model, load_dataset(data_dir).split("train"), batch_size=8)
    t2i = emb.texts @ emb.images.T - model.query_bank.image_offsets(emb.images)[None, :]
    i2t = emb.images @ emb.texts.T - model.query_bank.text_offsets(emb.texts)[None, :]

    def rank(row, target):
        return int(np.sum(row > row[target]) + np.sum(row[:target] == row[target]))

    t2i_ranks = np.array([rank(row, owner) for row, owner in zip(t2i, emb.text_to_image)])
    i2t_ranks = np.array([min(rank(row, j) for j in np.flatnonzero(emb.text_to_image == image))
                          for image, row in enumerate(i2t)])
    for k in (1, 5, 10):
        assert bank["recalls"][f"t2i_r{k}"] == pytest.approx(100 * np.mean(t2i_ranks < k))
        assert bank["recalls"][f"i2t_r{k}"] == pytest.approx(100 * np.mean(i2t_ranks < k))
    assert bank["recalls"] != plain["recalls"]


@pytest.mark.parametrize("case", ["beta", "not-a-model", "no-captions", "directions", "views", "weighting"])
def test_query_bank_bad_input_is_one_line(banked, tmp_path, capsys, case):
    _, plain_dir, _, data_dir = banked
    model = tmp_path / "model"
    shutil.copytree(plain_dir, model)
    args, expected = [str(model), str(data_dir), "--beta", "10"], ""
    if case == "beta":
        args[-1], expected = "-1", "--beta must be a positive number"
    elif case == "not-a-model":
        args[0], expected = str(tmp_path), "not a model checkpoint folder"
    elif case == "weighting":
        args, expected = [*args, "--weighting", "heavy"], "--weighting must be one of count, balanced"
    elif case == "views":
        args, expected = [*args, "--test-time-views", "0"], "--test-time-views must be 1..8, got 0"
    elif case == "directions":
        args, expected = [*args, "--directions", "sideways"], "--directions must be one of both, t2i, i2t"
    else:
        empty = tmp_path / "empty"
        empty.mkdir()
        args[1], expected = str(empty), str(empty)
    capsys.readouterr()
    assert engine_main(["query-bank", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and re.search(re.escape(expected), err), err
    assert not (model / BANK_FILE).exists()


def test_offsets_are_kept_in_the_index_folder_per_bank(banked, tmp_path, monkeypatch):
    index_dir, _, model_dir, data_dir = banked
    from engine.query.engine import QueryEngine
    from indexing.layout import BANK_OFFSETS_FILE

    index_copy = tmp_path / "index"
    shutil.copytree(index_dir, index_copy)
    (index_copy / BANK_OFFSETS_FILE).unlink(missing_ok=True)
    from PIL import Image

    from engine.query.request import QueryRequest
    from indexing.layout import BANK_CAPTION_OFFSETS_FILE

    image = Image.open(next((data_dir / "images").iterdir())).convert("RGB")
    first = QueryEngine(index_copy, checkpoint=str(model_dir))
    captions_first = first.search(QueryRequest(image=image, target="captions", k=3)).hits
    first.close()
    assert (index_copy / BANK_OFFSETS_FILE).is_file() and (index_copy / BANK_CAPTION_OFFSETS_FILE).is_file()

    def no_compute(*args, **kwargs):
        raise AssertionError("recomputed although the kept offsets fit")

    with monkeypatch.context() as patch:
        patch.setattr(BankOffsets, "compute", classmethod(no_compute))
        patch.setattr(QueryBank, "text_offsets", no_compute)
        again = QueryEngine(index_copy, checkpoint=str(model_dir))
        np.testing.assert_array_equal(again.bank_offsets.values, first.bank_offsets.values)
        captions_again = again.search(QueryRequest(image=image, target="captions", k=3)).hits
        assert [(h.caption_id, h.score) for h in captions_again] == [(h.caption_id, h.score) for h in captions_first]
        again.close()
    other = tmp_path / "other-bank"  # another bank (β) for the same model: the kept offsets do not fit
    shutil.copytree(model_dir, other)
    assert engine_main(["query-bank", str(other), str(data_dir), "--beta", "5"]) == 0
    rebuilt = QueryEngine(index_copy, checkpoint=str(other))
    assert not np.allclose(rebuilt.bank_offsets.values, first.bank_offsets.values)
    rebuilt.close()


def test_python_api_takes_query_bank(banked):
    index_dir, _, model_dir, _ = banked
    import engine

    with pytest.raises(ConfigError, match="query_bank must be True or False, got 'no'"):
        engine.open(index_dir, model=str(model_dir), query_bank="no")
    with engine.open(index_dir, model=str(model_dir)) as banked_index, \
            engine.open(index_dir, model=str(model_dir), query_bank=False) as plain_index:
        with_bank = banked_index.search("a river tile", k=4).column("score").to_pylist()
        without = plain_index.search("a river tile", k=4).column("score").to_pylist()
    assert with_bank != pytest.approx(without)


def test_eval_through_the_index_matches_exact_eval_with_the_bank(banked, tmp_path):
    index_dir, _, model_dir, data_dir = banked
    exact, through = tmp_path / "exact.json", tmp_path / "index.json"
    assert engine_main(["eval", str(data_dir), "--split", "train", "--model", str(model_dir),
                        "--out", str(exact)]) == 0
    assert engine_main(["eval", str(data_dir), "--split", "train", "--model", str(model_dir), "--index",
                        str(index_dir), "--out", str(through)]) == 0
    exact_result, index_result = (json.loads(path.read_text()) for path in (exact, through))
    assert index_result["search"]["query_bank"]["digest"] == exact_result["settings"]["query_bank"]["digest"]
    assert index_result["recalls"] == pytest.approx(exact_result["recalls"])


def test_an_id_without_an_offset_is_one_error_line():
    offsets = BankOffsets(np.array([1, 2, 3]), np.zeros(3, np.float32))
    np.testing.assert_array_equal(offsets.of(np.array([3, 1])), [0, 0])
    with pytest.raises(ConfigError, match="image id 7 is in faiss.index but has no stored embedding"):
        offsets.of(np.array([1, 7]))


def test_balanced_bank_gives_every_dataset_the_same_weight(banked, tmp_path):
    _, plain_dir, _, data_dir = banked
    from training_fixtures import write_captioned_dataset

    import encoders

    other = write_captioned_dataset(tmp_path / "other")  # other captions, other image count
    model = tmp_path / "model"
    shutil.copytree(plain_dir, model)
    assert engine_main(["query-bank", str(model), str(data_dir), str(other), "--beta", "10",
                        "--weighting", "balanced"]) == 0
    bank = encoders.load_model(model).query_bank
    assert np.exp(bank.log_weights).sum() == pytest.approx(2.0)  # two datasets, each summing to 1
    assert np.exp(bank.image_log_weights).sum() == pytest.approx(2.0)
    first_images = sum(e["split"] == "train" for e in json.loads((data_dir / "dataset.json").read_text())["images"])
    assert np.exp(bank.image_log_weights[:first_images]) == pytest.approx(np.full(first_images, 1 / first_images))
    assert "datasets weighted equally" in bank.sources
    counted = tmp_path / "counted"
    shutil.copytree(plain_dir, counted)
    assert engine_main(["query-bank", str(counted), str(data_dir), str(other), "--beta", "10"]) == 0
    plain_bank = encoders.load_model(counted).query_bank
    assert plain_bank.image_log_weights is None and plain_bank.digest() != bank.digest()
    assert not np.allclose(bank.text_offsets(bank.images), plain_bank.text_offsets(plain_bank.images))
