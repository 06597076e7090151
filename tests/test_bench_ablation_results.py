"""Ablation rows become `engine eval` result files that `--compare` reads back, and a plot is drawn."""

from pathlib import Path

import pytest

from bench.ablation_results import write_ablation_results
from engine.evaluation.report import RECALL_KEYS, read_result, result_label

DATASET = {"name": "toy", "root": "/data/toy", "split": "test", "images": 3, "captions": 15}


def _recalls(base: float) -> dict[str, float]:
    return {key: base + offset for offset, key in enumerate(RECALL_KEYS)}


def test_rows_round_trip_through_read_result(tmp_path: Path):
    folder, plot = tmp_path / "results", tmp_path / "plot.png"
    (folder).mkdir()
    (folder / "old-run.json").write_text("{}")  # a stale file from an earlier run must not survive
    paths = write_ablation_results([("mask none", _recalls(10)), ("mask soft σ=0.2", _recalls(20))], DATASET,
                                   {"spec": "toy"}, {"mode": "exact"}, {"command": "python x", "commit": "abc"},
                                   folder, plot)
    assert sorted(folder.glob("*.json")) == sorted(paths)
    assert [path.name for path in paths] == ["00-mask-none.json", "01-mask-soft-0.2.json"]
    loaded = [read_result(path) for path in paths]
    assert [result_label(path, data) for path, data in zip(paths, loaded)] == ["mask none", "mask soft σ=0.2"]
    assert loaded[1]["recalls"]["i2t_r1"] == 20 and loaded[1]["git_commit"] == "abc"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_row_missing_a_recall_is_refused(tmp_path: Path):
    partial = _recalls(1)
    del partial["mR"]
    with pytest.raises(ValueError, match="lacks mR"):
        write_ablation_results([("broken", partial)], DATASET, {}, {}, {}, tmp_path / "r", tmp_path / "p.png")
