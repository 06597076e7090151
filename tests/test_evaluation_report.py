"""Result files: atomic write, strict read, comparison table and plot through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.evaluation.report import EvalResult, read_result, write_result


def _result(mr: float, label: str) -> EvalResult:
    recalls = {key: mr for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")}
    return EvalResult(
        dataset={"name": "ucm", "split": "test", "images": 3, "captions": 15},
        model={"spec": "x", "fingerprint": "f"},
        search={"mode": "exact"},
        recalls=recalls | {"mR": mr},
        settings={"label": label},
    )


def test_roundtrip_and_compare_with_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    write_result(_result(40.0, "baseline"), first)
    write_result(_result(52.5, "pir"), second)
    assert read_result(second)["recalls"]["mR"] == 52.5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    plot = tmp_path / "plots" / "recall.png"
    assert main(["eval", "--compare", str(first), str(second), "--plot", str(plot)]) == 0
    output = capsys.readouterr().out
    assert "baseline" in output and "pir" in output and "52.50" in output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_json_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "a.json"
    write_result(_result(10.0, "only"), path)
    assert main(["eval", "--compare", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["only"]["mR"] == 10.0


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ('{"format": "other"}', "not an engine eval result"),
     ('{"format": "engine-eval/1", "recalls": {"mR": 1}}', "recalls lacks"),
     ('{"format": "engine-eval/1", "recalls": {"i2t_r1": 1, "i2t_r5": 1, "i2t_r10": 1, "t2i_r1": 1, "t2i_r5": 1, '
      '"t2i_r10": 1, "mR": 1}, "recalls_interval": {"level": 95, "bounds": {"mR": [1]}}}', "recalls_interval")],
)
def test_bad_result_files_give_one_line(tmp_path: Path, capsys, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main(["eval", "--compare", str(path)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error:") and message in error[0] and "bad.json" in error[0]


def test_missing_result_file(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--compare", str(tmp_path / "nope.json")]) == 2
    assert "result file not found" in capsys.readouterr().err


def test_bad_split_is_a_clear_error(capsys) -> None:
    assert main(["eval", "/nonexistent", "--split", "dev"]) == 2
    assert "--split must be train, val or test" in capsys.readouterr().err


def test_compare_shows_the_interval_of_files_that_have_one(tmp_path: Path, capsys) -> None:
    with_interval, without = _result(24.07, "shipped"), _result(24.46, "paper")
    with_interval.recalls_interval = {"level": 95.0, "draws": 1000, "bounds": {"mR": [22.81, 25.33]}}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    write_result(with_interval, first)
    write_result(without, second)
    assert main(["eval", "--compare", str(first), str(second)]) == 0
    output = capsys.readouterr().out
    assert "mR 95% interval" in output and "22.81–25.33" in output
    paper_row = next(line for line in output.splitlines() if "paper" in line)
    assert paper_row.rstrip(" │|").endswith("-")


def _ranked(label: str, image_ranks: list[int], text_ranks: list[int], owner: list[int]) -> EvalResult:
    from engine.evaluation.report import encode_ranks
    from engine.metrics import RetrievalRanks, recalls_from_ranks

    ranks = RetrievalRanks(np.array(image_ranks), np.array(text_ranks))
    result = _result(0.0, label)
    result.recalls = recalls_from_ranks(ranks)
    result.dataset = {"name": "ucm", "split": "test", "images": len(image_ranks), "captions": len(text_ranks)}
    result.ranks = encode_ranks(ranks, np.array(owner))
    return result


def test_compare_pairs_files_that_hold_ranks(tmp_path: Path, capsys) -> None:
    from engine.evaluation.report import decode_ranks

    owner = [0, 0, 1, 1, 2, 2, 3, 3]
    paths = [tmp_path / f"{name}.json" for name in ("a", "b", "c")]
    write_result(_ranked("first", [0, 3, 5, 12], [0, 2, 7, 9, 11, 0, 4, 20], owner), paths[0])
    write_result(_ranked("better", [0, 0, 5, 12], [0, 0, 0, 9, 11, 0, 0, 20], owner), paths[1])
    write_result(_ranked("other-split", [0, 0, 5, 12], [0, 0, 0, 9, 11, 0, 0, 20], [0, 1, 1, 1, 2, 2, 3, 3]),
                 paths[2])
    ranks, decoded_owner = decode_ranks(paths[0], read_result(paths[0]))
    assert ranks.text_to_image.tolist() == [0, 2, 7, 9, 11, 0, 4, 20] and decoded_owner.tolist() == owner
    assert main(["eval", "--compare", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    paired = next(line for line in lines if line.startswith("better − first"))
    assert "mR +" in paired and "paired 95% interval" in paired and "4 images" in paired
    assert any(line.startswith("other-split: not paired with first") for line in lines)
    write_result(_result(10.0, "old"), tmp_path / "old.json")  # a file without ranks: said, not silently skipped
    assert main(["eval", "--compare", str(paths[0]), str(tmp_path / "old.json"), str(paths[1])]) == 0
    output = capsys.readouterr().out
    assert "no paired difference for old: the result file holds no ranks" in output
    assert "better − first: mR +" in output  # the two files with ranks are still paired
    assert main(["eval", "--compare", str(paths[0]), str(tmp_path / "old.json"), str(paths[1]), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["first"]["mR"] == read_result(paths[0])["recalls"]["mR"]
    lacking, better = printed["paired differences"]
    assert lacking == {"run": "old", "lacks_ranks": True}
    assert better["run"] == "better" and better["base"] == "first" and better["mR"] > 0 and better["images"] == 4
    write_result(_ranked("paired differences", [0, 0, 5, 12], [0, 0, 0, 9, 11, 0, 0, 20], owner), paths[2])
    assert main(["eval", "--compare", str(paths[0]), str(paths[2]), "--json"]) == 2  # the label would be overwritten
    assert "a run is labelled 'paired differences'" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["encoding", "bytes", "owner"])
def test_damaged_ranks_give_one_line(tmp_path: Path, capsys, damage: str) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        write_result(_ranked(path.stem, [0, 1], [0, 1, 1, 0], [0, 0, 1, 1]), path)
    data = json.loads(paths[1].read_text())
    if damage == "encoding":
        data["ranks"]["encoding"] = "raw"
    elif damage == "bytes":
        data["ranks"]["text_to_image"] = "not base64!"
    else:
        from engine.evaluation.report import encode_ranks
        from engine.metrics import RetrievalRanks

        data["ranks"] = encode_ranks(RetrievalRanks(np.array([0, 1]), np.array([0, 1, 1, 0])), np.array([0, 0, 1, 5]))
    paths[1].write_text(json.dumps(data))
    assert main(["eval", "--compare", *map(str, paths)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "b.json: field ranks" in error[0]
