"""``engine eval --index/--rerank`` on tiny real indexes, and the by-class image→image recall against a naive loop."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine.cli import main
from engine.evaluation.class_recall import NO_PARTNER, class_recalls, first_same_class_ranks

IMAGES = 30  # 2 of every 3 in the test split: 20 test images, 40 captions (R@1 is far from 0 and from 100)
CLASSES = ("river", "farm", "port")


def _write_dataset(root: Path) -> None:
    from query_fixtures import structured_image

    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for number in range(IMAGES):
        image_id, label = 500 + number, CLASSES[number % len(CLASSES)]
        structured_image(number).save(root / "images" / f"t{number:03d}.png")
        sentences = [{"raw": f"{label} scene {number} seen {view}", "tokens": [], "imgid": image_id,
                      "sentid": image_id * 10 + view} for view in range(2)]
        entries.append({"filename": f"t{number:03d}.png", "imgid": image_id, "class": label,
                        "split": "train" if number % 3 == 0 else "test",
                        "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))


def _index(data: Path, model: Path, out: Path, *extra: str) -> Path:
    code = main(["index", str(data), "--out", str(out), "--model", str(model), "--workers", "0", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    import torch

    import encoders

    base = tmp_path_factory.mktemp("eval-index")
    torch.manual_seed(0)
    encoders.save_model(encoders.create_model("tiny-test"), base / "model")
    torch.manual_seed(1)
    encoders.save_model(encoders.create_model("tiny-test"), base / "other-model")
    _write_dataset(base / "data")
    return {"base": base, "data": base / "data", "model": base / "model",
            "flat": _index(base / "data", base / "model", base / "flat")}


def _eval(setup, out_name: str, *extra: str) -> dict:
    out = setup["base"] / out_name
    code = main(["eval", str(setup["data"]), "--model", str(setup["model"]), "--out", str(out), *extra])
    assert code == 0
    return json.loads(out.read_text())


def test_flat_index_matches_exact_evaluation(setup) -> None:
    exact = _eval(setup, "exact.json")
    indexed = _eval(setup, "flat.json", "--index", str(setup["flat"]))
    assert indexed["search"]["mode"] == "index" and indexed["search"]["exact"] is True
    assert "Flat" in indexed["search"]["factory"]
    assert 0 < exact["recalls"]["t2i_r1"] < 100  # a non-trivial case: ranks really are compared
    for key, value in exact["recalls"].items():
        assert indexed["recalls"][key] == pytest.approx(value, abs=1e-9), key
    for key, value in exact["recalls_pessimistic"].items():
        assert indexed["recalls_pessimistic"][key] == pytest.approx(value, abs=1e-9), key
    assert indexed["recalls_interval"] == exact["recalls_interval"]  # same ranks, same seeded draws
    assert exact["recalls_interval"]["bounds"]["mR"][0] < exact["recalls_interval"]["bounds"]["mR"][1]
    from engine.evaluation.report import decode_ranks

    exact_ranks, owner = decode_ranks(Path("exact"), exact)
    index_ranks, index_owner = decode_ranks(Path("flat"), indexed)  # a caption whose image is not returned:
    depth = indexed["search"]["depth"]                                 # a rank past the search depth
    assert (owner == index_owner).all() and (exact_ranks.image_to_text == index_ranks.image_to_text).all()
    assert (np.minimum(exact_ranks.text_to_image, depth) == np.minimum(index_ranks.text_to_image, depth)).all()


def test_compare_pairs_two_models_on_the_same_images(setup, capsys) -> None:
    first = setup["base"] / "pair-a.json"
    second = setup["base"] / "pair-b.json"
    for model, out in ((setup["model"], first), (setup["base"] / "other-model", second)):
        assert main(["eval", str(setup["data"]), "--model", str(model), "--out", str(out), "--label",
                     out.stem]) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", str(first), str(second)]) == 0
    line = next(text for text in capsys.readouterr().out.splitlines() if text.startswith("pair-b − pair-a"))
    a, b = (json.loads(path.read_text())["recalls"]["mR"] for path in (first, second))
    assert f"mR {b - a:+.2f}, paired 95% interval" in line and "20 images" in line


@pytest.mark.parametrize("factory, param", [("HNSW8", "efSearch"), ("IVF2,Flat", "nprobe")])
def test_approximate_indexes_run_and_name_their_factory(setup, factory, param) -> None:
    folder = _index(setup["data"], setup["model"], setup["base"] / factory.replace(",", "-"), "--index", factory)
    result = _eval(setup, f"{factory}.json", "--index", str(folder))
    assert result["search"]["factory"] == factory
    assert result["search"]["exact"] is False and param in result["search"]["search_params"]
    assert result["search"]["depth"] == 10
    assert all(0.0 <= value <= 100.0 for value in result["recalls"].values())


def test_rerank_runs_and_records_latency(setup) -> None:
    result = _eval(setup, "aas.json", "--index", str(setup["flat"]), "--rerank", "aas", "--rerank-depth", "20")
    rerank = result["search"]["rerank"]
    assert rerank["method"] == "aas" and rerank["depth"] == 20
    latency = rerank["latency_per_query"]
    assert latency["count"] == 40 and 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["max_ms"]
    assert rerank["images_encoded"] == 20 and rerank["queries_filling_cache"] >= 1  # depth 20 = the whole split
    assert (setup["flat"] / "attention").is_dir()  # the query engine's cache was used, not a private copy
    par = _eval(setup, "par.json", "--index", str(setup["flat"]), "--rerank", "par-bonus")
    assert par["search"]["rerank"]["images_encoded"] == 0  # warm: every feature came from the cache
    assert par["search"]["rerank"]["latency_warm_queries"]["count"] == 40


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_index_without_the_split_or_its_captions_is_one_error(setup, tmp_path, capsys) -> None:
    other = tmp_path / "other-data"
    shutil.copytree(setup["data"], other)
    entries = json.loads((other / "dataset.json").read_text())
    entries["images"][1]["filename"] = "renamed.png"
    (other / "images" / "t001.png").rename(other / "images" / "renamed.png")
    (other / "dataset.json").write_text(json.dumps(entries))
    line = _error_line(capsys, ["eval", str(other), "--model", str(setup["model"]), "--index", str(setup["flat"])])
    assert "lacks 1 of the 20 images" in line and "renamed.png" in line
    entries["images"][1]["filename"] = "t001.png"
    (other / "images" / "renamed.png").rename(other / "images" / "t001.png")
    entries["images"][2]["sentences"].append({"raw": "a sentence added after indexing", "tokens": [],
                                              "imgid": 502, "sentid": 99999})
    (other / "dataset.json").write_text(json.dumps(entries))
    line = _error_line(capsys, ["eval", str(other), "--model", str(setup["model"]), "--index", str(setup["flat"])])
    assert "lacks caption embeddings for 1 of the 41 captions" in line and "99999" in line
    no_text = _index(setup["data"], setup["model"], tmp_path / "no-text", "--no-text")
    capsys.readouterr()  # the build's own progress output
    line = _error_line(capsys, ["eval", str(setup["data"]), "--model", str(setup["model"]), "--index",
                                str(no_text)])
    assert "no caption embeddings" in line


def test_index_of_another_model_is_one_error(setup, capsys) -> None:
    line = _error_line(capsys, ["eval", str(setup["data"]), "--model", str(setup["base"] / "other-model"),
                                "--index", str(setup["flat"])])
    assert "built with model" in line


def test_rerank_without_index_is_one_error(setup, capsys) -> None:
    line = _error_line(capsys, ["eval", str(setup["data"]), "--model", str(setup["model"]), "--rerank", "aas"])
    assert "--rerank needs --index" in line


def _naive_class_ranks(embeddings: np.ndarray, labels: list[str]) -> np.ndarray:
    ranks = np.full(len(labels), NO_PARTNER)
    for query in range(len(labels)):
        gallery = [item for item in range(len(labels)) if item != query]
        scores = embeddings[gallery] @ embeddings[query]
        order = np.argsort(-scores, kind="stable")
        hits = [rank for rank, slot in enumerate(order) if labels[gallery[slot]] == labels[query]]
        if hits:
            ranks[query] = hits[0]
    return ranks


@pytest.mark.parametrize("seed", range(4))
def test_class_ranks_match_a_naive_loop_on_random_embeddings(seed) -> None:
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(37, 6)).astype(np.float32)
    labels = [f"c{value}" for value in rng.integers(0, 6, size=37)]
    labels[-1] = "singleton"
    expected = _naive_class_ranks(embeddings, labels)
    np.testing.assert_array_equal(first_same_class_ranks(embeddings, labels, chunk_size=8), expected)
    assert expected[-1] == NO_PARTNER


def test_class_ranks_with_ties_and_duplicates() -> None:
    embeddings = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)  # exact duplicates tie
    labels = ["a", "b", "a", "b", "c"]
    np.testing.assert_array_equal(first_same_class_ranks(embeddings, labels), _naive_class_ranks(embeddings, labels))
    # query 0: gallery 1 (b, tie, listed first), 2 (a) -> rank 1; query 1: 0, 2 tie with it, b partner at rank 2
    assert list(first_same_class_ranks(embeddings, labels)) == [1, 2, 0, 2, NO_PARTNER]
    assert class_recalls(embeddings, labels, ks=(1, 2, 4)) == {"r1": 25.0, "r2": 50.0, "r4": 100.0}


def _run_script(module_name: str, argv: list[str], monkeypatch) -> int:
    import importlib

    script = importlib.import_module(f"bench.{module_name}")
    monkeypatch.setattr(sys, "argv", [f"bench/{module_name}.py", *argv])
    return script.main()


def test_ablation_scripts_write_json_and_only_their_docs_block(setup, tmp_path, monkeypatch) -> None:
    page = tmp_path / "ablations.md"
    page.write_text("# Ablations\n\n<!-- BEGIN model -->\nkept as is\n<!-- END model -->\n")
    common = ["--data", str(setup["data"]), "--checkpoint", str(setup["model"]), "--docs", str(page)]
    assert _run_script("masking_ablation", [*common, "--out", str(tmp_path / "masking.json"), "--results",
                                            str(tmp_path / "results"), "--plot", str(tmp_path / "m.png")],
                       monkeypatch) == 0
    masking = json.loads((tmp_path / "masking.json").read_text())
    # one `engine eval` result file per mode, readable by --compare, and the plot
    assert len(list((tmp_path / "results").glob("*.json"))) == 4 and (tmp_path / "m.png").stat().st_size > 0
    assert [row["mode"] for row in masking["rows"]] == ["none", "soft σ=0.2", "soft σ=0.5", "hard"]
    assert masking["data"]["images"] == 20 and masking["data"]["classes"] == 2
    embedded_none = masking["rows"][0]["image_to_image"]
    assert set(embedded_none) == {"r1", "r2", "r4", "r8"} and embedded_none["r8"] >= embedded_none["r1"]
    assert _run_script("rerank_ablation", [*common, "--index", str(setup["flat"]), "--rerank-depth", "20",
                                           "--out", str(tmp_path / "rerank.json")], monkeypatch) == 0
    rerank = json.loads((tmp_path / "rerank.json").read_text())
    assert [row["method"] for row in rerank["rows"]] == ["none", "aas", "par-bonus", "par-bonus, gates 0.5"]
    assert all(0 <= share <= 1 for row in rerank["rows"][2:] for share in row["par_gate_pass"].values())
    for row in rerank["rows"][1:]:
        assert row["t2i_images_encoded_first_pass"] == 20  # the cache was emptied before each reranker
        assert row["t2i_latency_warm"]["count"] == 40 and row["i2i_latency"]["count"] == 20
    text = page.read_text()
    assert "kept as is" in text and "<!-- BEGIN masking -->" in text and "<!-- BEGIN rerank -->" in text
    assert "| hard |" in text and "| par-bonus |" in text
    per_class = masking["rows"][-1]["image_to_image_per_class"]  # per-class R@K of the study's diagnosis
    assert len(per_class) == masking["data"]["classes"] and set(per_class) <= set(CLASSES)
    assert all(set(recalls) == {"r1", "r2", "r4", "r8"} for recalls in per_class.values())
    assert "Per class (image→image R@1" in text


def test_masking_script_without_a_shipped_model_says_so(setup, tmp_path, monkeypatch, capsys) -> None:
    import encoders
    from engine.errors import ConfigError

    def no_shipped_model(spec=None):
        raise ConfigError("no default model is shipped yet")

    monkeypatch.setattr(encoders, "load_model", no_shipped_model)
    argv = ["--data", str(setup["data"]), "--out", str(tmp_path / "m.json"), "--docs", str(tmp_path / "a.md")]
    assert _run_script("masking_ablation", argv, monkeypatch) == 2
    assert "shipped model is not available" in capsys.readouterr().err and not (tmp_path / "m.json").exists()
