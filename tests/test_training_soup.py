"""`engine soup`: the averaged model's weights are the members' mean, its record names its members and their
data, and bad inputs are one error line with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from encoders.checkpoint import SOUPED_FROM_FIELD, TRAINED_ON_FIELD, load_model
from engine.cli import main as engine_main
from engine.data import load_dataset
from training.train import train
from training_fixtures import tiny_cached_config as _config, write_captioned_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[Path]:
    """Two seeds trained on from one start (the soup's intended members)."""
    root = tmp_path_factory.mktemp("soup")
    data = write_captioned_dataset(root / "data")
    train(load_dataset(data), _config(root / "cache"), root / "start", show_progress=False)
    folders = []
    for seed in (1, 2):
        train(load_dataset(data), _config(root / "cache", seed=seed, init_from=str(root / "start" / "best")),
              root / f"seed{seed}", show_progress=False)
        folders.append(root / f"seed{seed}" / "best")
    return folders


def _meta(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_soup_weights_are_the_members_mean(members, tmp_path):
    assert engine_main(["soup", *map(str, members), "--out", str(tmp_path / "soup")]) == 0
    states = [load_model(folder).state_dict() for folder in members]
    souped = load_model(tmp_path / "soup").state_dict()
    moved = 0
    for key, value in souped.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (states[0][key] + states[1][key]) / 2, msg=key)
            moved += not torch.equal(states[0][key], states[1][key])
        else:
            assert torch.equal(value, states[0][key]), key
    assert moved > 0  # the members differ, so the mean is a third model, not a copy of either


def test_soup_records_its_members_and_their_data(members, tmp_path):
    engine_main(["soup", *map(str, members), "--out", str(tmp_path / "soup")])
    meta = _meta(tmp_path / "soup")
    assert meta[SOUPED_FROM_FIELD] == [_meta(folder)["fingerprint"] for folder in members]
    assert meta[TRAINED_ON_FIELD] == _meta(members[0])[TRAINED_ON_FIELD]  # same data: recorded once
    assert meta["fingerprint"] == load_model(tmp_path / "soup").fingerprint()


def test_members_may_differ_in_inference_settings(members, tmp_path):
    other = tmp_path / "four-views"
    shutil.copytree(members[1], other)
    meta = _meta(other)
    meta["model"]["vision"]["test_time_views"] = 4
    (other / "config.json").write_text(json.dumps(meta))
    assert engine_main(["soup", str(members[0]), str(other), "--out", str(tmp_path / "soup")]) == 0


@pytest.mark.parametrize("case", ["one", "unknown", "other-config", "out-exists", "out-under-a-file"])
def test_bad_input_is_one_line_and_writes_nothing(members, tmp_path, capsys, case):
    out = tmp_path / "soup"
    models = [str(folder) for folder in members]
    if case == "one":
        models, expected = models[:1], "at least 2 models"
    elif case == "unknown":
        models, expected = [models[0], str(tmp_path / "missing")], "missing: model checkpoint folder not found"
    elif case == "other-config":
        other = tmp_path / "no-vir"
        shutil.copytree(members[1], other)
        meta = _meta(other)
        meta["model"]["head"]["use_vir"] = not meta["model"]["head"]["use_vir"]
        (other / "config.json").write_text(json.dumps(meta))
        models, expected = [models[0], str(other)], "another model config than .* \\(differs in head\\)"
    elif case == "out-under-a-file":
        (tmp_path / "file").write_text("x")
        out, expected = tmp_path / "file" / "soup", "file is not a folder"
    else:
        out.mkdir()
        expected = "already exists"
    capsys.readouterr()
    assert engine_main(["soup", *models, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert pytest.importorskip("re").search(expected, err), err
    assert not out.exists() or not any(out.iterdir())
