"""Checkpoint folders: roundtrip, strict loading with clear errors, fingerprints, default model lookup."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import encoders
from encoders import checkpoint
from encoders.model_config import load_config
from engine.errors import ConfigError


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[encoders.PIRModel, Path]:
    torch.manual_seed(3)
    model = encoders.create_model("tiny-test").eval()
    folder = encoders.save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny")
    return model, folder


def test_roundtrip_gives_identical_embeddings_and_fingerprint(saved: tuple[encoders.PIRModel, Path]) -> None:
    model, folder = saved
    loaded = encoders.load_model(folder)
    pixels = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.encode_image(pixels), model.encode_image(pixels), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode_text(["a road"]), model.encode_text(["a road"]), rtol=0, atol=0)
    assert loaded.fingerprint() == model.fingerprint()
    meta = json.loads((folder / "config.json").read_text())
    assert meta["fingerprint"] == model.fingerprint() and meta["text_identity"]["vocab_size"] == 30522
    assert not list(folder.parent.glob(".*"))  # no staging leftovers


def test_fingerprint_follows_weights_and_config() -> None:
    torch.manual_seed(4)
    model = encoders.create_model("tiny-test")
    before = model.fingerprint()
    assert model.fingerprint() == before
    with torch.no_grad():
        model.text_proj.bias[0] += 1e-3
    assert model.fingerprint() != before
    other = encoders.create_model(model.config.replace(name="renamed"))
    other.load_state_dict(model.state_dict())
    assert other.fingerprint() != model.fingerprint()


def test_embed_dim_mismatch_names_both(saved: tuple[encoders.PIRModel, Path], tmp_path: Path) -> None:
    _, folder = saved
    config = load_config("tiny-test")
    wider = encoders.create_model(config.replace(head=dataclasses.replace(config.head, embed_dim=64)))
    with pytest.raises(ConfigError, match="checkpoint embed_dim 32 does not match config embed_dim 64"):
        checkpoint.load_weights(wider, folder)


def test_missing_unexpected_and_reshaped_keys_are_errors(saved: tuple[encoders.PIRModel, Path], tmp_path: Path) -> None:
    _, folder = saved
    state = load_file(str(folder / "model.safetensors"))
    cases = {
        "missing key vision_proj.bias": {k: v for k, v in state.items() if k != "vision_proj.bias"},
        "unexpected key extra.weight": {**state, "extra.weight": torch.zeros(1)},
        "has shape \\(3,\\)": {**state, "vision_proj.bias": torch.zeros(3)},
    }
    for needle, broken in cases.items():
        target = tmp_path / needle[:7].replace(" ", "_")
        target.mkdir()
        (target / "config.json").write_text((folder / "config.json").read_text())
        save_file(broken, str(target / "model.safetensors"))
        with pytest.raises(ConfigError, match=needle):
            encoders.load_model(target)


def test_not_a_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        encoders.load_model(tmp_path / "absent")
    with pytest.raises(ConfigError, match="config.json"):
        encoders.load_model(tmp_path)


def test_heads_only_requires_dependency_backbones(saved: tuple[encoders.PIRModel, Path], tmp_path: Path) -> None:
    model, _ = saved
    with pytest.raises(ConfigError, match="randomly initialised backbone"):
        encoders.save_model(model, tmp_path / "heads", include_backbones=False)


def test_default_model_absent_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(checkpoint, "DEFAULT_MODEL_DIR", tmp_path / "weights")
    with pytest.raises(ConfigError, match="no default model is shipped yet"):
        encoders.load_model(None)


def test_half_precision_storage_halves_size_and_predicts_loaded_fingerprint(tmp_path: Path) -> None:
    import json

    model = encoders.create_model("tiny-test")
    full = encoders.checkpoint.save_model(model, tmp_path / "full")
    half = encoders.checkpoint.save_model(model, tmp_path / "half", half_precision=True)
    full_bytes = (full / "model.safetensors").stat().st_size
    half_bytes = (half / "model.safetensors").stat().st_size
    assert half_bytes < 0.6 * full_bytes
    loaded = encoders.load_model(half)
    meta = json.loads((half / "config.json").read_text())
    assert meta["storage_dtype"] == "float16"
    assert meta["fingerprint"] == loaded.fingerprint()
    assert json.loads((full / "config.json").read_text())["fingerprint"] == encoders.load_model(full).fingerprint()
    for key, value in loaded.state_dict().items():
        assert value.dtype == model.state_dict()[key].dtype
        assert torch.allclose(value, model.state_dict()[key], atol=1e-2, rtol=1e-2)


def test_partially_fine_tuned_model_stores_only_the_changed_backbone_tensors(tmp_path: Path) -> None:
    """--unfreeze-last trains a backbone tail: a heads-only save keeps exactly those tensors, and loads strictly."""
    import json

    torch.manual_seed(0)
    model = encoders.create_model("offline-default").eval()
    with torch.no_grad():
        model.vision.model.conv_head.weight.mul_(1.01)  # as if the last stage had been trained
        model.text.model.encoder.layer[-1].output.dense.bias.add_(0.01)
    folder = encoders.save_model(model, tmp_path / "tail", include_backbones=False)
    meta = json.loads((folder / "config.json").read_text())
    changed = ["text.model.encoder.layer.5.output.dense.bias", "vision.model.conv_head.weight"]
    assert meta["weights"] == "heads+changed-backbone" and meta["changed_backbone_keys"] == changed
    stored = set(load_file(str(folder / "model.safetensors")))
    assert {key for key in stored if key.startswith(("vision.", "text."))} == set(changed)
    loaded = encoders.load_model(folder)
    probe = ["a plane is parked at the airport", "many green trees"]
    pixels = torch.rand(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded.encode_text(probe), model.encode_text(probe))
        assert torch.equal(loaded.encode_image(pixels), model.encode_image(pixels))
    assert loaded.fingerprint() == meta["fingerprint"]

    meta["changed_backbone_keys"] = changed[:1]  # the list and the stored tensors disagree: strict load refuses
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="unexpected"):
        encoders.load_model(folder)
    meta["changed_backbone_keys"] = ["vision.model.no_such_layer.weight"]
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="no_such_layer"):
        encoders.load_model(folder)
    meta["changed_backbone_keys"] = []
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="changed_backbone_keys"):
        encoders.load_model(folder)


def test_saved_folder_gets_umask_modes_not_private_ones(tmp_path: Path) -> None:
    """mkdtemp (0700) and safetensors (0600) would make a saved model unreadable to other users."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        folder = encoders.save_model(encoders.create_model("tiny-test"), tmp_path / "shared")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()} == {0o644}


def test_earlier_defaults_load_by_name_and_unknown_names_list_the_known_ones() -> None:
    from encoders.checkpoint import NAMED_MODELS_DIR, load_model, shipped_model_names, training_provenance
    from engine.errors import ConfigError

    assert "ucm-v1" in shipped_model_names() and shipped_model_names()[0] == "default"
    model = load_model("ucm-v1")
    assert model.fingerprint() == json.loads((NAMED_MODELS_DIR / "ucm-v1" / "config.json").read_text())["fingerprint"]
    assert {record["kind"] for record in training_provenance("ucm-v1")} == {"ucm_captions", "aid"}
    with pytest.raises(ConfigError, match=r"not a shipped model name \(default, .*ucm-v1"):
        load_model("ucm-v0")
