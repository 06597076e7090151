"""The Python API (``import engine; engine.open(...)``): tables, image inputs, embeddings, threads, closing, and
one-line EngineErrors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from query_fixtures import build_query_index

import engine
from engine.errors import EngineError

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    return build_query_index(tmp_path_factory.getbasetemp() / "query-index")


@pytest.fixture(scope="module")
def ix(built):
    index_dir, _, _ = built
    with engine.open(index_dir, device="cpu") as opened:
        yield opened


def images(built) -> list[Path]:
    return sorted((built[2] / "images").glob("*.png"))


def test_import_engine_stays_light() -> None:
    code = ("import sys, engine; heavy = [m for m in ('torch', 'pyarrow', 'faiss', 'duckdb', 'numpy') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(engine.open)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_text_search_returns_a_table_with_catalog_columns(ix) -> None:
    table = ix.search("river tile", k=4, where="split = 'train'", columns=["split", "width"])
    assert table.column_names == ["id", "score", "path", "class", "captions", "split", "width"]
    assert table.num_rows == 4 and set(table.column("split").to_pylist()) == {"train"}
    scores = table.column("score").to_pylist()
    assert scores == sorted(scores, reverse=True)
    by_id = {meta.image_id: meta for meta in ix._engine.store.catalog.lookup(table.column("id").to_pylist())}
    for row in table.to_pylist():
        meta = by_id[row["id"]]
        assert (row["class"], row["width"], row["captions"]) == (meta.label, meta.width, meta.captions)
        assert row["path"].endswith(meta.path)
    frame = table.to_pandas()
    assert list(frame["id"]) == table.column("id").to_pylist()


def test_the_table_is_the_engine_query_answer(ix) -> None:
    from engine.query.request import QueryRequest

    table = ix.search("a farm tile", k=5, rerank="aas", rerank_depth=8)
    result = ix.query(QueryRequest(text="a farm tile", k=5, rerank="aas", rerank_depth=8))
    assert table.column("id").to_pylist() == [hit.image_id for hit in result.hits]
    assert np.allclose(table.column("score").to_pylist(), [hit.score for hit in result.hits])


def test_captions_target_and_notes(ix) -> None:
    table = ix.search("river", k=3, target="captions")
    assert table.column_names[-2:] == ["caption_id", "caption"] and table.num_rows == 3
    assert all("river" in text or "farm" in text for text in table.column("caption").to_pylist())
    many = ix.search("river", k=500)
    assert many.num_rows == len(ix) == 16
    assert "more than the 16" in json.loads(many.schema.metadata[b"notes"])[0]


def test_image_queries_by_path_pil_and_array_agree(ix, built) -> None:
    from PIL import Image

    path = images(built)[5]
    picture = Image.open(path).convert("RGB")
    by_path = ix.search(image=path, k=3)
    by_pil = ix.search(image=picture, k=3)
    by_array = ix.search(image=np.asarray(picture), k=3)
    by_float = ix.search(image=np.asarray(picture, dtype=np.float32) / 255, k=3)
    by_rgba = ix.search(image=np.asarray(picture.convert("RGBA")), k=3)
    first = by_path.column("id").to_pylist()
    for table in (by_pil, by_array, by_float, by_rgba):
        assert table.column("id").to_pylist() == first
        assert np.allclose(table.column("score").to_pylist(), by_path.column("score").to_pylist(), atol=1e-5)
    assert by_path.column("path").to_pylist()[0].endswith(path.name)  # an indexed image finds itself first


def test_embeddings_match_what_the_index_stores(ix, built) -> None:
    from PIL import Image

    store = ix._engine.store
    caption_ids, _, texts, matrix = store.caption_matrix()
    mine = ix.embed_text(texts[:6])
    assert mine.shape == (6, matrix.shape[1]) and mine.dtype == np.float32
    assert (mine * matrix[:6]).sum(1).min() >= 0.9999
    paths = images(built)[:3]
    vectors = ix.embed_images([paths[0], Image.open(paths[1]), np.asarray(Image.open(paths[2]).convert("RGB"))])
    ids = [ix.search(image=path, k=1).column("id")[0].as_py() for path in paths]
    _, stored = store.embeddings_for(np.asarray(sorted(ids), np.int64))
    stored = stored[np.argsort(np.argsort(ids))]
    assert (vectors * stored).sum(1).min() >= 0.999
    assert ix.embed_text([]).shape == (0, matrix.shape[1])


def test_concurrent_threads_get_the_sequential_answers(ix) -> None:
    queries = [("river", None), ("farm", "split = 'test'"), ("a river tile number 3", None), ("farm", None)] * 3
    expected = [ix.search(text, k=5, where=where).column("id").to_pylist() for text, where in queries]
    answers: list = [None] * len(queries)

    def run(position: int) -> None:
        text, where = queries[position]
        answers[position] = ix.search(text, k=5, where=where).column("id").to_pylist()

    threads = [threading.Thread(target=run, args=(position,)) for position in range(len(queries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == expected


def test_batched_index_answers_like_the_plain_one(built, ix) -> None:
    with engine.open(built[0], device="cpu", batch=True) as batched:
        assert batched._engine.batcher is not None
        table = batched.search("river tile", k=4)
    assert table.column("id").to_pylist() == ix.search("river tile", k=4).column("id").to_pylist()


def test_the_context_manager_closes(built) -> None:
    with engine.open(built[0], device="cpu") as opened:
        assert len(opened) == 16 and "split" in opened.columns
        model_thread = opened._engine._model_thread
    assert model_thread._shutdown
    with pytest.raises(EngineError, match="is closed"):
        opened.search("river")
    opened.close()  # twice is fine
    assert "closed" in repr(opened)


def test_close_waits_for_calls_in_progress_on_other_threads(built) -> None:
    opened = engine.open(built[0], device="cpu", batch=True)
    outcomes: list[str] = []
    started = threading.Event()

    def keep_searching() -> None:
        for number in range(200):
            try:
                opened.search(f"river {number}", k=3, where="split = 'train'")
                opened.embed_text(["farm"])
                outcomes.append("ok")
            except EngineError as error:
                outcomes.append("closed" if "is closed" in str(error) else repr(error))
                return
            except Exception as error:  # noqa: BLE001 -- what the test is about
                outcomes.append(repr(error))
                return
            finally:
                started.set()

    threads = [threading.Thread(target=keep_searching) for _ in range(3)]
    for thread in threads:
        thread.start()
    started.wait(timeout=60)
    opened.close()
    for thread in threads:
        thread.join(timeout=60)
    assert set(outcomes) <= {"ok", "closed"} and outcomes.count("closed") == 3, outcomes


def test_load_model(built) -> None:
    model = engine.load_model(str(built[1]))
    assert not model.training and model.fingerprint()
    with pytest.raises(EngineError, match="not found"):
        engine.load_model("runs/no-such-model/")
    with pytest.raises(EngineError, match="model name"):
        engine.load_model(3)


@pytest.mark.parametrize("call, message", [
    (lambda ix, built: ix.search("river", image=images(built)[0]), "not both"),
    (lambda ix, built: ix.search(), "not neither"),
    (lambda ix, built: ix.search(["river"]), "text must be a string"),
    (lambda ix, built: ix.search("river", k=0), "-k must be a positive"),
    (lambda ix, built: ix.search("river", k="5"), "k must be an integer"),
    (lambda ix, built: ix.search("river", k=True), "k must be an integer"),
    (lambda ix, built: ix.search("river", where=5), "where must be a string"),
    (lambda ix, built: ix.search("river", where="splt = 'test'"), "splt"),
    (lambda ix, built: ix.search("river", rerank="bogus"), "--rerank"),
    (lambda ix, built: ix.search("river", target="maps"), "--target"),
    (lambda ix, built: ix.search("river", columns="split"), "list of column names"),
    (lambda ix, built: ix.search("river", columns=["split", "colour"]), "unknown 'colour'"),
    (lambda ix, built: ix.search(image=42), "file path, a PIL image or a numpy array"),
    (lambda ix, built: ix.search(image="no/such.png"), "no/such.png"),
    (lambda ix, built: ix.search(image=np.zeros((4, 4, 2), np.uint8)), "shape"),
    (lambda ix, built: ix.search(image=np.full((4, 4, 3), 2.0)), "within 0..1"),
    (lambda ix, built: ix.search(image=np.zeros((4, 4, 3), np.int64)), "uint8"),
    (lambda ix, built: ix.embed_text("river"), "list of strings"),
    (lambda ix, built: ix.embed_text(["river", 3]), "list of strings"),
    (lambda ix, built: ix.embed_images(images(built)[0]), "list of images"),
    (lambda ix, built: ix.embed_images(["no/such.png"]), "no/such.png"),
    (lambda ix, built: engine.open(built[0] / "missing"), "not found"),
    (lambda ix, built: engine.open(built[0], device="tpu"), "device"),
    (lambda ix, built: engine.open(42), "folder path"),
    (lambda ix, built: engine.open(built[0], text_encoder="fast"), "text_encoder must be one of"),
])
def test_bad_arguments_are_one_line_engine_errors(ix, built, call, message) -> None:
    with pytest.raises(EngineError) as caught:
        call(ix, built)
    assert message in str(caught.value) and "\n" not in str(caught.value)
