"""`engine train-instruction --unfreeze-last N`: the backbone tail trains with the classifier, from cached trunk
maps, and the tail reaches the shared vision backbone of every model built with those instruction weights."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import encoders
import training  # noqa: F401
from encoders.model_config import load_config
from encoders.split import network_trunk
from encoders.vision import create_timm_model
from engine.cli import main as engine_main
from engine.errors import ConfigError
from training.instruction import InstructionTrainConfig
from training.instruction_tail import fit_tail, predict, tail_state
from training_fixtures import CLASSES, write_scene_folders

torch.set_num_threads(2)


def _tiny_shared_config(tmp_path):
    config = json.loads(json.dumps(dataclasses.asdict(load_config("tiny-test"))))
    config["name"] = "tiny-shared"
    config["instruction"].update(feature="logits", share_vision_backbone=True, num_classes=len(CLASSES))
    path = tmp_path / "tiny-shared.json"
    path.write_text(json.dumps(config))
    return path


def test_fit_tail_trains_the_tail_and_nothing_before_it():
    torch.manual_seed(0)
    network = create_timm_model("test_efficientnet", "none", 0, field="test").eval()
    before = {key: value.clone() for key, value in network.state_dict().items()}
    tail_keys = set(tail_state(network, 1))
    with torch.no_grad():
        trunks = torch.stack([network_trunk(network, torch.randn(24, 3, 64, 64), 1) for _ in range(2)], dim=1)
    labels = torch.arange(24) % 3
    classifier = torch.nn.Linear(int(network.num_features), 3)
    settings = InstructionTrainConfig(model="tiny-test", epochs=40, batch_size=16, learning_rate=1e-2,
                                      unfreeze_last=1, backbone_lr_scale=0.5, label_smoothing=0.0)
    fit_tail(network, classifier, trunks.half(), labels, 1, settings)
    after = network.state_dict()
    changed = {key for key in after if not torch.equal(after[key], before[key])}
    assert changed and changed <= tail_keys  # BatchNorm statistics stay, the trunk stays
    assert any(key.startswith("conv_head") for key in changed)
    accuracy = (predict(network, classifier, trunks.half(), 1, batch_size=7) == labels).float().mean()
    assert accuracy >= 0.9  # it can fit its own training set


def test_cli_stores_the_tail_with_the_classifier_and_models_apply_it(tmp_path, capsys, monkeypatch):
    config_path = _tiny_shared_config(tmp_path)
    folder = write_scene_folders(tmp_path / "aid", per_class=5)
    cache = tmp_path / "cache"
    args = ["train-instruction", str(folder), "--config", str(config_path), "--out", str(tmp_path / "out"),
            "--epochs", "3", "--views", "2", "--unfreeze-last", "1", "--feature-cache", str(cache), "--quiet"]
    assert engine_main(args) == 0, capsys.readouterr().err
    assert len(list(cache.glob("trunk-*.safetensors"))) == 2  # held-out (1 view) and train (2 views)
    weights = tmp_path / "out" / "instruction.safetensors"
    stored = load_file(str(weights))
    shared = {key.removeprefix("shared_backbone."): value for key, value in stored.items()
              if key.startswith("shared_backbone.")}
    assert set(stored) - {f"shared_backbone.{key}" for key in shared} == {"classifier.weight", "classifier.bias"}
    assert any(key.startswith("conv_head.") for key in shared) and any(key.startswith("bn2.") for key in shared)
    model_config = load_config(config_path)
    model = encoders.create_model(model_config.replace(
        instruction=dataclasses.replace(model_config.instruction, weights=str(weights))))
    vision_state = model.vision.model.state_dict()
    assert all(torch.equal(vision_state[key], value) for key, value in shared.items())

    def no_backbone_pass(*_args, **_kwargs):
        raise AssertionError("the cached trunk maps should have been reused")

    monkeypatch.setattr("encoders.split.network_trunk", no_backbone_pass)
    assert engine_main(args) == 0, capsys.readouterr().err


def test_shared_backbone_tensors_are_checked(tmp_path):
    config = load_config(_tiny_shared_config(tmp_path))
    width = encoders.create_model(config).vision.width
    classifier = {"classifier.weight": torch.zeros(len(CLASSES), width), "classifier.bias": torch.zeros(len(CLASSES))}
    wrong_shape = tmp_path / "wrong_shape.safetensors"
    save_file({**classifier, "shared_backbone.conv_head.weight": torch.zeros(2, 2)}, str(wrong_shape))
    with pytest.raises(ConfigError, match="conv_head.weight"):
        encoders.create_model(config.replace(instruction=dataclasses.replace(config.instruction,
                                                                             weights=str(wrong_shape))))
    own_backbone = load_config("tiny-test")
    with pytest.raises(ConfigError, match="share_vision_backbone"):
        encoders.create_model(own_backbone.replace(instruction=dataclasses.replace(
            own_backbone.instruction, num_classes=len(CLASSES), weights=str(wrong_shape))))


def test_checkpoint_keeps_the_aid_tail_without_the_instruction_file(tmp_path):
    """Real backbones: a heads-only save stores the AID-trained tail as changed tensors; the folder alone loads."""
    base = encoders.create_model("offline-default")
    tail = tail_state(base.vision.model, 1)
    tail["conv_head.weight"] = tail["conv_head.weight"] * 1.01  # as if trained on AID
    classes = base.config.instruction.num_classes
    weights = tmp_path / "instruction.safetensors"
    save_file({"classifier.weight": torch.randn(classes, base.vision.width), "classifier.bias": torch.zeros(classes),
               **{f"shared_backbone.{key}": value for key, value in tail.items()}}, str(weights))
    config = base.config.replace(instruction=dataclasses.replace(base.config.instruction, weights=str(weights)))
    model = encoders.create_model(config).eval()
    assert torch.equal(model.vision.model.conv_head.weight, tail["conv_head.weight"])
    folder = encoders.save_model(model, tmp_path / "run", include_backbones=False)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["changed_backbone_keys"] == ["vision.model.conv_head.weight"]
    assert meta["model"]["instruction"]["weights"] is None
    weights.unlink()
    loaded = encoders.load_model(folder)
    pixels = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded.encode_image(pixels), model.encode_image(pixels))


def test_cli_refuses_a_tail_longer_than_the_backbone(tmp_path, capsys):
    folder = write_scene_folders(tmp_path / "aid", per_class=3)
    code = engine_main(["train-instruction", str(folder), "--config", "tiny-test", "--out", str(tmp_path / "out"),
                        "--epochs", "1", "--views", "1", "--unfreeze-last", "99", "--quiet"])
    assert code != 0
    assert "--unfreeze-last 99" in capsys.readouterr().err
    assert not (tmp_path / "out" / "instruction.safetensors").exists()


def test_train_backbone_fine_tunes_the_whole_own_instruction_network(tmp_path, capsys):
    """--train-backbone: every stage of the instruction's own backbone changes (not only the tail), the saved
    weights rebuild that network inside a retrieval model, and a shared-backbone config is refused."""
    folder = write_scene_folders(tmp_path / "aid", per_class=5)
    torch.manual_seed(0)
    config = load_config("tiny-test")
    fresh = encoders.create_model(config).instruction.backbone.state_dict()
    args = ["train-instruction", str(folder), "--config", "tiny-test", "--out", str(tmp_path / "out"),
            "--epochs", "2", "--views", "4", "--train-backbone", "--batch-size", "4", "--quiet"]
    assert engine_main(args) == 0, capsys.readouterr().err
    assert "held-out top-1" in capsys.readouterr().out
    stored = load_file(str(tmp_path / "out" / "instruction.safetensors"))
    stems = [key for key in stored if key.startswith("backbone.conv_stem.")]
    assert stems and all(not torch.equal(stored[key], fresh[key.removeprefix("backbone.")]) for key in stems)
    assert any(key.startswith("backbone.blocks.0.") for key in stored)
    model = encoders.create_model(config.replace(instruction=dataclasses.replace(
        config.instruction, num_classes=len(CLASSES), weights=str(tmp_path / "out" / "instruction.safetensors"))))
    own = model.instruction.backbone.state_dict()
    assert all(torch.equal(own[key.removeprefix("backbone.")], value) for key, value in stored.items()
               if key.startswith("backbone."))
    assert not model.instruction.training and not any(p.requires_grad for p in model.instruction.parameters())
    shared = ["train-instruction", str(folder), "--config", str(_tiny_shared_config(tmp_path)), "--out",
              str(tmp_path / "bad"), "--train-backbone", "--quiet"]
    assert engine_main(shared) == 2 and "shares the vision backbone" in capsys.readouterr().err
