"""`engine train-instruction` on generated scene folders: deterministic stratified split, weights, report."""

from __future__ import annotations

import dataclasses
import json

import torch

import training  # noqa: F401
from engine.cli import main as engine_main
from engine.data import load_dataset
from engine.data.splits import stratified_split
from training_fixtures import CLASSES, write_scene_folders

torch.set_num_threads(2)


def test_split_is_stratified_and_deterministic(tmp_path):
    dataset = load_dataset(write_scene_folders(tmp_path / "aid", per_class=10))
    train, test = stratified_split(dataset, 0.8, seed=5)
    assert stratified_split(dataset, 0.8, seed=5) == (train, test)
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(dataset.images)
    for label in {image.label for image in dataset.images}:
        assert sum(dataset.images[p].label == label for p in train) == 8
    assert stratified_split(dataset, 0.8, seed=6)[0] != train


def test_cli_trains_classifier_and_reports_top1(tmp_path, capsys):
    folder = write_scene_folders(tmp_path / "aid", per_class=5)
    code = engine_main(["train-instruction", str(folder), "--config", "tiny-test", "--out", str(tmp_path / "out"),
                        "--epochs", "40", "--views", "2", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "out" / "instruction_report.json").read_text())
    assert report["classes"] == sorted(c.capitalize() for c in CLASSES)
    assert report["split"]["test_images"] == 3  # one held-out image per class (5 x 0.2)
    assert 0.0 <= report["held_out_top1"] <= 1.0
    assert (tmp_path / "out" / "instruction.safetensors").is_file()
    assert "held-out top-1" in captured.out


def test_shared_backbone_config_saves_only_the_classifier(tmp_path, capsys):
    """The offline default shares the vision backbone: its weights file must hold the classifier alone and load."""
    from safetensors.torch import load_file

    from encoders.model_config import load_config
    from encoders.instruction import InstructionEncoder

    config = json.loads(json.dumps(dataclasses.asdict(load_config("tiny-test"))))
    config["name"] = "tiny-shared"
    config["instruction"].update(feature="logits", share_vision_backbone=True)
    config_path = tmp_path / "tiny-shared.json"
    config_path.write_text(json.dumps(config))
    folder = write_scene_folders(tmp_path / "aid", per_class=5)
    code = engine_main(["train-instruction", str(folder), "--config", str(config_path), "--out",
                        str(tmp_path / "out"), "--epochs", "5", "--views", "1", "--quiet"])
    assert code == 0, capsys.readouterr().err
    weights = tmp_path / "out" / "instruction.safetensors"
    assert sorted(load_file(str(weights))) == ["classifier.bias", "classifier.weight"]
    shared = dataclasses.replace(
        load_config(config_path).instruction, num_classes=len(CLASSES), weights=str(weights))
    encoder = InstructionEncoder(shared, shared_width=int(load_file(str(weights))["classifier.weight"].shape[1]))
    assert encoder.feature_dim == len(CLASSES)
