"""The paper configuration (`pir-paper`: Swin-T + BERT-base + ResNet-50 instruction) runs end to end.

No hub here, so the architectures are built with random weights (``encoders.model_config.with_random_weights``): two
training steps from a trunk cache and two live, both with ``--unfreeze-last 1`` (Swin's last stage and BERT's
last layer train), then ``engine index`` and ``engine eval`` with the trained checkpoint on a few images.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import training  # noqa: F401  (torchvision shim)
from encoders.model_config import load_config, with_random_weights
from engine.cli import main as engine_main
from training_fixtures import write_captioned_dataset

def test_with_random_weights_keeps_the_architectures_and_needs_no_download() -> None:
    paper = load_config("pir-paper")
    random = with_random_weights(paper)
    assert (random.vision.timm_name, random.instruction.timm_name) == (paper.vision.timm_name, "resnet50")
    assert random.vision.pretrained == random.instruction.pretrained == "none"
    assert not random.text.pretrained and random.text.tokenizer == "package:minilm"
    assert (random.text.architecture.hidden_size, random.text.architecture.num_layers) == (768, 12)
    assert random.head == paper.head


def _changed(saved: dict, prefix: str, reference: dict) -> bool:
    return any(not torch.equal(saved[key], reference[key]) for key in saved
               if key.startswith(prefix) and saved[key].is_floating_point() and "running" not in key)


def test_pir_paper_trains_cached_and_live_then_indexes_and_evaluates(tmp_path, capsys) -> None:
    torch.set_num_threads(2)
    data = write_captioned_dataset(tmp_path / "data", per_class=(2, 1, 1))  # 18 train pairs: 2 steps of 8
    config_path = tmp_path / "pir-paper-random.json"
    config_path.write_text(json.dumps(with_random_weights(load_config("pir-paper")).to_dict()))
    common = ["train", str(data), "--config", str(config_path), "--epochs", "1", "--batch-size", "8",
              "--unfreeze-last", "1", "--backbone-lr-scale", "1", "--lr", "1e-3", "--seed", "5", "--quiet"]
    runs = {"cached": [*common, "--feature-cache", str(tmp_path / "cache"), "--cached-views", "1"],
            "live": common}
    for name, argv in runs.items():
        assert engine_main([*argv, "--out", str(tmp_path / name)]) == 0, capsys.readouterr().err
        state = json.loads((tmp_path / name / "last" / "train_state.json").read_text())
        assert state["global_step"] == 2
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").glob("features-*")) == ["features"] * 2
    cached, live = (load_file(str(tmp_path / name / "last" / "model.safetensors")) for name in ("cached", "live"))
    # the same seed builds the same random network: what differs from the live run's start is what trained
    torch.manual_seed(5)
    for saved in (cached, live):
        assert any(key.startswith("vision.model.layers.3.") for key in saved)
        assert any(key.startswith("text.model.encoder.layer.11.") for key in saved)
    assert _changed(cached, "vision.model.layers.3.", live) and _changed(cached, "vir.", live)
    assert not _changed(cached, "vision.model.layers.0.", live)  # the trunk is frozen in both runs
    assert not _changed(cached, "instruction.", live)  # the instruction network is frozen

    model = tmp_path / "cached" / "best"
    assert engine_main(["index", str(data), "--out", str(tmp_path / "index"), "--model", str(model),
                        "--workers", "0"]) == 0, capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert engine_main(["eval", str(data), "--model", str(model), "--split", "test", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dataset"]["images"] == 3 and 0.0 <= result["recalls"]["mR"] <= 100.0
