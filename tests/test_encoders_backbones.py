"""Backbone adapters: the offline EfficientNet-Lite0 weights, MiniLM offline, Swin/ViT token layouts."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

import encoders  # noqa: F401  (runs the torchvision shim before timm is imported)
import timm
from encoders import efficientnet_weights
from encoders.model_config import TextConfig, VisionConfig
from encoders.text import TextBackbone
from encoders.vision import VisionBackbone, create_timm_model
from engine.errors import ConfigError


@pytest.mark.parametrize("source, timm_name, tensors", [("package:efficientnet-lite0", "tf_efficientnet_lite0", 247),
                                                         ("package:efficientnet-lite2", "tf_efficientnet_lite2", 322)])
def test_efficientnet_package_mapping_covers_every_tensor(source: str, timm_name: str, tensors: int) -> None:
    weights = efficientnet_weights.load_package_state_dict(source)
    target = OrderedDict(timm.create_model(timm_name, pretrained=False).state_dict())
    mapped = efficientnet_weights.map_to_timm(weights, target, timm_name)
    assert list(mapped) == list(target)
    assert sum(not k.endswith("num_batches_tracked") for k in mapped) == tensors
    assert all(torch.equal(a, b) for a, b in zip(mapped.values(), weights.values()))


def test_lite2_config_gives_a_9x9_token_grid_at_260_px() -> None:
    backbone = VisionBackbone(VisionConfig(timm_name="tf_efficientnet_lite2", pretrained="package:efficientnet-lite2",
                                           image_size=260, token_grid=9)).eval()
    with torch.no_grad():
        global_token, tokens = backbone(torch.randn(1, 3, 260, 260))
    assert global_token.shape == (1, 1280) and tokens.shape == (1, 81, 1280)
    with pytest.raises(ConfigError, match="only fits timm_name 'tf_efficientnet_lite2'"):
        VisionConfig(pretrained="package:efficientnet-lite2").validate()


def test_efficientnet_mapping_rejects_shape_or_count_mismatch() -> None:
    source = efficientnet_weights.load_package_state_dict()
    target = OrderedDict(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    shifted = OrderedDict(list(source.items())[1:])
    with pytest.raises(ConfigError, match="tensors"):
        efficientnet_weights.map_to_timm(shifted, target)
    swapped = OrderedDict((k, v.t() if v.ndim == 2 else v) for k, v in source.items())
    with pytest.raises(ConfigError, match="mapping broke"):
        efficientnet_weights.map_to_timm(swapped, target)


def test_packaged_efficientnet_adapter_and_preprocessing() -> None:
    backbone = VisionBackbone(VisionConfig()).eval()
    assert backbone.data_config["mean"] == (0.5, 0.5, 0.5) and backbone.data_config["std"] == (0.5, 0.5, 0.5)
    with torch.no_grad():
        global_token, tokens = backbone(torch.randn(1, 3, 224, 224))
        feature_map = backbone.model.forward_features(torch.zeros(1, 3, 224, 224))
    assert global_token.shape == (1, 1280) and tokens.shape == (1, 49, 1280)
    pooled, grid = backbone.tokens_from_features(feature_map)
    torch.testing.assert_close(pooled, grid.mean(dim=1))  # global = pooled 7x7 map


def test_swin_adapter_nhwc_shapes_without_weights() -> None:
    backbone = VisionBackbone(VisionConfig("swin_tiny_patch4_window7_224", "none", 224, 7)).eval()
    with torch.no_grad():
        global_token, tokens = backbone(torch.randn(1, 3, 224, 224))
    assert backbone.token_layout.layout == "NHWC"
    assert global_token.shape == (1, 768) and tokens.shape == (1, 49, 768)
    torch.testing.assert_close(global_token, tokens.mean(dim=1))


def test_vit_adapter_drops_prefix_tokens() -> None:
    backbone = VisionBackbone(VisionConfig("test_vit", "none", 96, 6)).eval()
    with torch.no_grad():
        global_token, tokens = backbone(torch.randn(2, 3, 96, 96))
    assert tokens.shape == (2, 36, backbone.width) and global_token.shape == (2, backbone.width)


def test_unknown_backbone_and_wrong_grid_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="close names: .*swin_tiny_patch4_window7_224"):
        create_timm_model("swin_tiny_patch4_window7", "none", 0, "vision.timm_name")
    with pytest.raises(ConfigError, match="vision.token_grid 5"):
        VisionBackbone(VisionConfig("test_efficientnet", "none", 96, 5))


def test_minilm_loads_offline_and_cuts_captions() -> None:
    text = TextBackbone(TextConfig())
    assert text.width == 384
    long_caption = " ".join(["runway"] * 80)
    batch = text.tokenize([long_caption, "a plane"])
    words_only = text.tokenize([" ".join(["runway"] * 30)])
    assert batch.input_ids.shape[1] == words_only.input_ids.shape[1] == 32  # 30 words + [CLS] + [SEP]
    assert text.tokenize([" ".join(["antidisestablishmentarianism"] * 30)]).input_ids.shape[1] == 47
    assert torch.equal(batch.input_ids[0, : words_only.input_ids.shape[1]], words_only.input_ids[0])
    with torch.no_grad():
        assert text(batch).shape == (2, batch.input_ids.shape[1], 384)
