"""Result files: atomic write, strict read, comparison table and plot through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

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
