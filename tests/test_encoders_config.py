"""Model configs: shipped files parse, and every malformed field raises ConfigError naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders.model_config import ModelConfig, config_from_dict, load_config, named_configs, save_config
from engine.errors import ConfigError


def test_shipped_configs_load_and_roundtrip(tmp_path: Path) -> None:
    assert {"tiny-test", "offline-default", "pir-paper"} <= set(named_configs())
    paper = load_config("pir-paper")
    assert paper.vision.timm_name == "swin_tiny_patch4_window7_224.ms_in22k"
    assert (paper.head.r_k, paper.head.n_v, paper.head.n_t, paper.embed_dim) == (40, 2, 3, 512)
    assert paper.text.model == "bert-base-uncased" and paper.instruction.timm_name == "resnet50"
    for name in named_configs():
        config = load_config(name)
        save_config(config, tmp_path / f"{name}.json")
        assert load_config(tmp_path / f"{name}.json") == config


def _tiny_dict() -> dict:
    return json.loads(Path(load_config.__globals__["CONFIG_DIR"], "tiny-test.json").read_text())


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("head", "embedd_dim"), 3, "embedd_dim"),
        (("head", "embed_dim"), "512", "head.embed_dim"),
        (("head", "use_vir"), 1, "head.use_vir"),
        (("head", "r_k"), 11, "head.r_k 11"),
        (("head", "heads"), 5, "divisible"),
        (("vision", "pretrained"), "imagenet", "vision.pretrained"),
        (("text", "backend"), "openclip", "text.backend"),
        (("instruction", "feature"), "mean", "instruction.feature"),
        (("instruction", "class_names"), ["a", "b"], "class_names"),
    ],
)
def test_bad_fields_name_the_field(path: tuple[str, str], value: object, needle: str) -> None:
    data = _tiny_dict()
    data[path[0]][path[1]] = value
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(data)


def test_unknown_named_config_lists_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="tiny-test"):
        load_config("no-such-config")


def test_canonical_json_is_stable() -> None:
    config = load_config("tiny-test")
    assert config.to_json() == config_from_dict(json.loads(config.to_json())).to_json()
    assert isinstance(config, ModelConfig) and config.num_vision_tokens == 1 + 3 * 3
