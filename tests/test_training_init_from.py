"""`engine train --init-from MODEL`: training starts from a trained model's weights, and the new checkpoint still
names the data its start was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import training
from encoders.checkpoint import TRAINED_ON_FIELD, load_model
from engine.cli import main as engine_main
from engine.data import load_dataset
from engine.errors import EngineError
from training import model_ops
from training.train import train
from training_fixtures import tiny_cached_config as _config, write_captioned_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, the best checkpoint of a 2-epoch run on it)."""
    root = tmp_path_factory.mktemp("start")
    data = write_captioned_dataset(root / "data")
    train(load_dataset(data), _config(root / "cache", epochs=2), root / "run", show_progress=False)
    return data, root / "run" / "best"


def test_init_from_loads_every_weight_of_the_trained_model(trained, tmp_path):
    _, start = trained
    model = model_ops.build_model(_config(tmp_path / "cache"))
    model_ops.init_from(model, str(start))
    reference = load_model(start).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, reference[key], msg=key)


def test_training_starts_where_the_start_model_was(trained, tmp_path):
    """With a vanishing learning rate the first epoch cannot move the weights: its val recalls are the start's."""
    data, start = trained
    start_val = json.loads((start / "metrics.json").read_text())
    fresh = train(load_dataset(data), _config(tmp_path / "cache", learning_rate=1e-12), tmp_path / "fresh",
                  show_progress=False)
    continued = train(load_dataset(data), _config(tmp_path / "cache", learning_rate=1e-12, init_from=str(start)),
                      tmp_path / "continued", show_progress=False)
    assert continued.state.history[0]["val"]["mR"] == pytest.approx(start_val["mR"], abs=1e-6)
    assert fresh.state.history[0]["val"]["mR"] != pytest.approx(start_val["mR"], abs=1e-6)


def test_checkpoint_keeps_the_start_models_training_record(trained, tmp_path):
    data, start = trained
    other = write_captioned_dataset(tmp_path / "other", per_class=(3, 2, 1))
    train(load_dataset(other), _config(tmp_path / "cache", init_from=str(start)), tmp_path / "run",
          show_progress=False)
    recorded = json.loads((tmp_path / "run" / "best" / "config.json").read_text())[TRAINED_ON_FIELD]
    start_record = json.loads((start / "config.json").read_text())[TRAINED_ON_FIELD]
    assert len(start_record) == 1 and recorded[0] == start_record[0]
    assert [r["listing"] for r in recorded] == [start_record[0]["listing"], load_dataset(other).identity()["listing"]]
    assert model_ops.merged_provenance(start_record, start_record) == start_record  # the same data: one record


def test_resume_refuses_another_start_model(trained, tmp_path):
    data, start = trained
    train(load_dataset(data), _config(tmp_path / "cache", epochs=2), tmp_path / "run", show_progress=False,
          stop_after=1)
    with pytest.raises(EngineError, match="init_from"):
        train(load_dataset(data), _config(tmp_path / "cache", epochs=2, init_from=str(start)), tmp_path / "run",
              resume=tmp_path / "run", show_progress=False)


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = engine_main(list(args))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "instruction", "shape"])
def test_cli_bad_start_model_is_one_error_line(case, trained, tmp_path, capsys):
    data, start = trained
    args = ["train", str(data), "--config", "tiny-test", "--epochs", "1", "--batch-size", "8",
            "--out", str(tmp_path / "run"), "--quiet", "--init-from", str(start)]
    expected = {"missing": "--init-from: ", "instruction": "--instruction-weights",
                "shape": "--init-from"}[case]
    if case == "missing":
        args[-1] = str(tmp_path / "no-such-model")
    elif case == "instruction":
        args += ["--instruction-weights", str(tmp_path / "instruction.safetensors")]
    else:
        wide = json.loads((Path(training.__file__).parents[1] / "encoders/configs/tiny-test.json").read_text())
        wide["head"]["embed_dim"] = 48
        (tmp_path / "wide.json").write_text(json.dumps(wide))
        args[args.index("tiny-test")] = str(tmp_path / "wide.json")
    code, err = _cli(capsys, *args)
    lines = [line for line in err.strip().splitlines() if line and not line.startswith(("note:", "starting from"))]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing half-written
