"""``engine query`` through the real CLI on a tiny index built by ``engine index``: results, filters, output,
reranking and every bad input (one ``error:`` line, exit 2, no traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine.cli import main
from query_fixtures import IMAGE_COUNT, build_query_index

pytest.importorskip("faiss")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_query_index(tmp_path_factory.getbasetemp() / "query-index")


@pytest.fixture(autouse=True)
def engine_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ENGINE_PROJECT", str(tmp_path / "project"))
    monkeypatch.delenv("ENGINE_INDEX", raising=False)


def query(built, capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["query", *argv, "--index", str(built[0])])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def as_json(built, capsys, *argv: str) -> dict:
    code, out, err = query(built, capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_text_query_table_and_json(built, capsys) -> None:
    code, out, _ = query(built, capsys, "a river tile", "-k", "3")
    assert code == 0 and "rank" in out and "river" in out or "farm" in out
    result = as_json(built, capsys, "a river tile", "-k", "5")
    hits = result["results"]
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4, 5]
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert Path(hits[0]["path"]).is_file() and hits[0]["captions"]


def test_filter_runs_before_knn_and_returns_every_match(built, capsys) -> None:
    result = as_json(built, capsys, "tile", "-k", "10", "--where", "split = 'test' AND class = 'river'")
    assert len(result["results"]) == 4  # 4 test-split river tiles exist; k = 10 must not be cut by post-filtering
    assert {(hit["split"], hit["label"]) for hit in result["results"]} == {("test", "river")}
    assert any("more than the 4 images matching" in note for note in result["notes"])
    labelled = as_json(built, capsys, "tile", "-k", "3", "--where", "label = 'river'")
    assert len(labelled["results"]) == 3 and {hit["label"] for hit in labelled["results"]} == {"river"}


def test_filter_matching_nothing_is_an_empty_result_with_a_note(built, capsys) -> None:
    code, _, err = query(built, capsys, "tile", "--where", "class = 'volcano'")
    assert code == 0 and "no image matches" in err
    assert as_json(built, capsys, "tile", "--where", "class = 'volcano'")["results"] == []


def test_image_query_finds_itself_and_captions_target(built, capsys) -> None:
    image = built[2] / "images" / "tile_005.png"
    result = as_json(built, capsys, "--image", str(image), "-k", "2")
    assert result["results"][0]["image_id"] == 105 and result["results"][0]["score"] == pytest.approx(1, abs=1e-4)
    captions = as_json(built, capsys, "--image", str(image), "-k", "4", "--target", "captions")
    assert len(captions["results"]) == 4 and all("caption_id" in hit for hit in captions["results"])


@pytest.mark.parametrize("method", ["aas", "par-bonus"])
def test_rerankers_run_and_cache_attention_features(built, capsys, method: str) -> None:
    image = built[2] / "images" / "tile_002.png"
    result = as_json(built, capsys, "--image", str(image), "-k", "4", "--rerank", method, "--rerank-depth", "8")
    assert result["results"][0]["image_id"] == 102  # identical image scores highest under both
    parts = sorted((built[0] / "attention" / "layer-1").glob("part-*.npz"))
    assert parts and json.loads((built[0] / "attention" / "layer-1" / "meta.json").read_text())["layer"] == -1
    again = as_json(built, capsys, "--image", str(image), "-k", "4", "--rerank", method, "--rerank-depth", "8")
    assert again["results"] == result["results"]
    assert sorted((built[0] / "attention" / "layer-1").glob("part-*.npz")) == parts  # cached: nothing re-encoded
    text = as_json(built, capsys, "a farm tile", "-k", "4", "--rerank", method, "--rerank-depth", "8")
    assert len(text["results"]) == 4 and all("first_stage_score" in hit for hit in text["results"])


def test_overlong_query_is_truncated_with_a_warning(built, capsys) -> None:
    result = as_json(built, capsys, " ".join(["river"] * 200), "-k", "1")
    assert any("truncated" in note for note in result["notes"]) and len(result["results"]) == 1


def test_k_larger_than_the_index_is_clamped(built, capsys) -> None:
    result = as_json(built, capsys, "tile", "-k", "500")
    assert len(result["results"]) == IMAGE_COUNT and any("returning all" in note for note in result["notes"])


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err and all(fragment in lines[-1] for fragment in fragments), err


@pytest.mark.parametrize(("argv", "fragments"), [
    (["   "], ["query is empty"]),
    (["tile", "-k", "0"], ["-k must be a positive"]),
    (["tile", "--where", "no_such_column = 1"], ["--where", "no_such_column"]),
    (["tile", "--where", "split = 'a'; DROP VIEW images"], ["no ';'"]),
    (["tile", "--rerank", "magic"], ["--rerank"]),
    (["tile", "--rerank", "par"], ["--rerank par-bonus", "engine train --par"]),
    (["--image", "/nonexistent/x.png"], ["/nonexistent/x.png"]),
])
def test_bad_input_is_one_error_line(built, capsys, argv: list[str], fragments: list[str]) -> None:
    code, _, err = query(built, capsys, *argv)
    assert_user_error(code, err, *fragments)


def test_not_an_image_and_bad_index_folders(built, capsys, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    assert_user_error(*query(built, capsys, "--image", str(text_file))[::2], "notes.png")
    code = main(["query", "tile", "--index", str(tmp_path / "missing")])
    assert_user_error(code, capsys.readouterr().err, "index folder not found")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(built[0], corrupt)
    (corrupt / "index.json").write_text("{ not json")
    assert_user_error(main(["query", "tile", "--index", str(corrupt)]), capsys.readouterr().err, "index.json")


def test_index_of_another_model_is_refused(built, capsys, tmp_path: Path) -> None:
    import torch

    import encoders

    torch.manual_seed(1)
    other = encoders.save_model(encoders.create_model("tiny-test"), tmp_path / "other-model")
    code = main(["query", "tile", "--index", str(built[0]), "--model", str(other)])
    assert_user_error(code, capsys.readouterr().err, "built with model", "loaded model is")


def test_default_index_is_the_last_one_built(built, capsys, monkeypatch) -> None:
    from indexing.last_index import record_last_index

    record_last_index(built[0])
    code = main(["query", "tile", "-k", "2", "--json"])
    assert code == 0 and len(json.loads(capsys.readouterr().out)["results"]) == 2


def test_html_gallery_is_self_contained_and_renders(built, capsys, tmp_path: Path) -> None:
    page = tmp_path / "gallery.html"
    code, _, err = query(built, capsys, "a <b>river</b> tile", "-k", "6", "--html", str(page))
    assert code == 0, err
    html = page.read_text()
    assert html.count("data:image/jpeg;base64,") == 6 and "&lt;b&gt;river&lt;/b&gt;" in html
    assert "src='http" not in html and "<script" not in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed: rendering not checked")
    shot = tmp_path / "gallery.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as rendered:
        colours = rendered.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # thumbnails were drawn, not a blank page


def test_serve_refuses_an_unknown_text_encoder(built, capsys) -> None:
    code = main(["serve", "--index", str(built[0]), "--port", "0", "--text-encoder", "float16"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --text-encoder must be one of")
    assert "Traceback" not in err


def test_index_built_with_test_time_views_encodes_image_queries_the_same_way(built, capsys, tmp_path: Path) -> None:
    index_dir, model_dir, data_dir = built
    averaged = tmp_path / "index-2views"
    assert main(["index", str(data_dir), "--out", str(averaged), "--model", str(model_dir), "--workers", "0",
                 "--test-time-views", "2"]) == 0
    capsys.readouterr()
    image = str(data_dir / "images" / "tile_005.png")
    for index, other in ((averaged, index_dir), (index_dir, averaged)):
        code = main(["query", "--image", image, "-k", "2", "--index", str(index), "--json"])
        top = json.loads(capsys.readouterr().out)["results"][0]
        assert code == 0 and top["image_id"] == 105 and top["score"] == pytest.approx(1, abs=1e-5)
    # the stored vectors of the two indexes differ, so the match above is not a coincidence of the setting
    import pyarrow.parquet as pq

    def stored(folder: Path) -> list[float]:
        table = pq.read_table(folder / "shards", columns=["image_id", "embedding"])
        return dict(zip(table.column("image_id").to_pylist(), table.column("embedding").to_pylist()))[105]

    vectors = [stored(averaged), stored(index_dir)]
    assert max(abs(a - b) for a, b in zip(*vectors)) > 1e-3


def test_eval_records_test_time_views_and_refuses_them_with_an_index(built, capsys, tmp_path: Path) -> None:
    index_dir, model_dir, data_dir = built
    result_file = tmp_path / "eval.json"
    assert main(["eval", str(data_dir), "--model", str(model_dir), "--test-time-views", "3",
                 "--out", str(result_file)]) == 0
    assert json.loads(result_file.read_text())["settings"]["test_time_views"] == 3
    assert "3 dihedral image views averaged" in " ".join(capsys.readouterr().out.split())
    code = main(["eval", str(data_dir), "--index", str(index_dir), "--test-time-views", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--test-time-views" in err and err.count("\n") == 1
