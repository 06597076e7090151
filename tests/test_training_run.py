"""End-to-end training on a generated tiny dataset with the tiny-test config: selection, resume, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import training
from engine.cli import main as engine_main
from engine.data import load_dataset
from engine.errors import EngineError
from training.train_config import TrainConfig
from training.losses import PIRLoss
from training.train import TrainingDiverged, train
from training_fixtures import write_captioned_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_captioned_dataset(tmp_path_factory.mktemp("tiny"))


def _config(cache: Path, **changes) -> TrainConfig:
    base = dict(model="tiny-test", epochs=2, batch_size=8, learning_rate=1e-3, eval_batch_size=16,
                feature_cache=str(cache), seed=3)
    base.update(changes)
    return TrainConfig(**base)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_train_keeps_best_by_val_and_resume_matches_uninterrupted(tiny_data, tmp_path):
    dataset = load_dataset(tiny_data)
    config = _config(tmp_path / "cache")
    full = train(dataset, config, tmp_path / "full", show_progress=False)
    history = json.loads((tmp_path / "full" / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    scores = [entry["val"]["mR"] for entry in history]
    assert full.state.best_epoch == 1 + scores.index(max(scores))
    best_metrics = json.loads((tmp_path / "full" / "best" / "metrics.json").read_text())
    assert best_metrics["split"] == "val" and best_metrics["mR"] == pytest.approx(max(scores))
    assert not any(p.name.startswith(".") for p in (tmp_path / "full").iterdir())  # no staging left behind

    train(dataset, config, tmp_path / "split", show_progress=False, stop_after=1)
    assert json.loads((tmp_path / "split" / "last" / "train_state.json").read_text())["epoch"] == 1
    resumed = train(dataset, config, tmp_path / "split", resume=tmp_path / "split", show_progress=False)
    assert resumed.state.epoch == 2
    uninterrupted, continued = _weights(tmp_path / "full" / "last"), _weights(tmp_path / "split" / "last")
    assert uninterrupted.keys() == continued.keys()
    for key in uninterrupted:
        torch.testing.assert_close(continued[key], uninterrupted[key], rtol=1e-5, atol=1e-6, msg=key)
    assert resumed.state.history[-1]["val"] == pytest.approx(full.state.history[-1]["val"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    dataset = load_dataset(tiny_data)
    config = _config(tmp_path / "cache", epochs=3)
    train(dataset, config, tmp_path / "run", show_progress=False, stop_after=1)
    good = _weights(tmp_path / "run" / "last")
    original = PIRLoss.forward

    def poisoned(self, *args, **kwargs):
        parts = original(self, *args, **kwargs)
        parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(PIRLoss, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(dataset, config, tmp_path / "run", resume=tmp_path / "run", show_progress=False)
    kept = _weights(tmp_path / "run" / "last")
    for key in good:
        assert torch.equal(kept[key], good[key])


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = engine_main(list(args))
    return code, capsys.readouterr().err


def test_cli_trains_one_epoch(tiny_data, tmp_path, capsys):
    code, _ = _cli(capsys, "train", str(tiny_data), "--config", "tiny-test", "--epochs", "1", "--batch-size", "8",
                   "--out", str(tmp_path / "run"), "--feature-cache", str(tmp_path / "cache"), "--quiet")
    assert code == 0
    assert (tmp_path / "run" / "best" / "config.json").is_file()
    assert (tmp_path / "run" / "last" / "trainer.pt").is_file()


@pytest.mark.parametrize("case", ["backbone", "labels", "batch"])
def test_cli_bad_inputs_give_one_error_line(case, tiny_data, tmp_path, capsys):
    args = ["train", str(tiny_data), "--config", "tiny-test", "--epochs", "1", "--batch-size", "8",
            "--out", str(tmp_path / "run"), "--quiet"]
    expected = {"backbone": "no_such_backbone", "labels": "--no-affiliation", "batch": "--batch-size"}[case]
    if case == "backbone":
        config = json.loads((Path(training.__file__).parents[1] / "encoders/configs/tiny-test.json").read_text())
        config["vision"]["timm_name"] = "no_such_backbone"
        (tmp_path / "bad.json").write_text(json.dumps(config))
        args[args.index("tiny-test")] = str(tmp_path / "bad.json")
    elif case == "labels":
        args[1] = str(write_captioned_dataset(tmp_path / "unlabelled", with_class=False))
    else:
        args[args.index("8")] = "1000"
    code, err = _cli(capsys, *args)
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert expected in lines[0]
    assert "Traceback" not in err


def test_resume_with_other_config_names_both_dimensions(tiny_data, tmp_path):
    dataset = load_dataset(tiny_data)
    train(dataset, _config(tmp_path / "cache", epochs=2), tmp_path / "run", show_progress=False, stop_after=1)
    other = json.loads((Path(training.__file__).parents[1] / "encoders/configs/tiny-test.json").read_text())
    other["head"]["embed_dim"] = 48
    (tmp_path / "wide.json").write_text(json.dumps(other))
    with pytest.raises(EngineError, match="embed_dim 32.*embed_dim 48|48.*32"):
        train(dataset, _config(tmp_path / "cache", model=str(tmp_path / "wide.json")), tmp_path / "run",
              resume=tmp_path / "run", show_progress=False)


def test_live_training_with_last_blocks_unfrozen(tiny_data, tmp_path):
    """No feature cache: backbones run every step; --unfreeze-last 1 trains only their last block."""
    from training import model_ops
    from training.seeding import seed_everything

    dataset = load_dataset(tiny_data)
    config = _config(tmp_path / "unused", feature_cache=None, unfreeze_last=1, epochs=1)
    seed_everything(config.seed)
    reference = model_ops.build_model(config).state_dict()  # the initial weights training starts from
    train(dataset, config, tmp_path / "live", show_progress=False)
    saved = _weights(tmp_path / "live" / "last")
    blocks = sorted({k.split(".")[3] for k in saved if k.startswith("vision.model.blocks.")}, key=int)
    first, last = blocks[0], blocks[-1]
    changed = lambda prefix: any(  # noqa: E731
        not torch.equal(saved[k], reference[k]) for k in saved if k.startswith(prefix) and saved[k].is_floating_point()
        and "running" not in k)
    assert changed(f"vision.model.blocks.{last}.")
    assert not changed(f"vision.model.blocks.{first}.")
    assert any(k.startswith("vision.model.") for k in saved)  # backbones changed, so they are saved too


def test_cached_trunk_training_matches_live_training(tiny_data, tmp_path):
    """--unfreeze-last 1 --feature-cache trains the tails from cached trunk outputs: the same run as live training
    (up to the cache's float16 rounding), and a resumed run finds its cache again although the tails changed."""
    dataset = load_dataset(tiny_data)
    common = dict(unfreeze_last=1, epochs=2, augment=False, backbone_lr_scale=0.5)
    live = train(dataset, _config(tmp_path / "unused", feature_cache=None, **common), tmp_path / "live",
                 show_progress=False)
    cached = train(dataset, _config(tmp_path / "cache", cached_views=1, **common), tmp_path / "cached",
                   show_progress=False)
    for live_epoch, cached_epoch in zip(live.state.history, cached.state.history):
        assert cached_epoch["loss"] == pytest.approx(live_epoch["loss"], rel=2e-3)
    live_weights, cached_weights = _weights(tmp_path / "live" / "last"), _weights(tmp_path / "cached" / "last")
    assert live_weights.keys() == cached_weights.keys()
    for key in live_weights:
        # Adam normalises tiny gradient differences (float16 cache) into step-sized ones: compare at ~3 steps of lr
        torch.testing.assert_close(cached_weights[key], live_weights[key], rtol=0, atol=5e-3, msg=key)
    cache_files = sorted(path.name for path in (tmp_path / "cache").glob("features-*"))
    assert len(cache_files) == 2  # train + val trunk outputs

    config = _config(tmp_path / "cache", cached_views=1, **common)
    train(dataset, config, tmp_path / "split", show_progress=False, stop_after=1)
    train(dataset, config, tmp_path / "split", resume=tmp_path / "split", show_progress=False)
    assert sorted(path.name for path in (tmp_path / "cache").glob("features-*")) == cache_files


def test_backbone_weights_get_the_scaled_learning_rate(tiny_data):
    from training import model_ops
    from training.optim import build_optimizer

    config = _config(Path("unused"), unfreeze_last=1, learning_rate=1e-3, backbone_lr_scale=0.1)
    model = model_ops.build_model(config)
    optimizer = build_optimizer(model, config, backbones=[model.vision, model.text])
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    tail_block = model.text.model.encoder.layer[-1]
    assert all(rate_of[id(p)] == pytest.approx(1e-4) for p in tail_block.parameters())
    assert all(rate_of[id(p)] == pytest.approx(1e-3) for p in model.vision_proj.parameters())
    assert not any(id(p) in rate_of for p in model.text.model.encoder.layer[0].parameters())  # frozen
