"""Cached-feature training with an instruction encoder that shares the vision pass (the offline default)."""

from __future__ import annotations

import dataclasses

import torch

import encoders
from encoders.model_config import load_config
from training import model_ops
from training.train_config import TrainConfig


def _shared_config(use_vir: bool = True):
    config = load_config("tiny-test")
    instruction = dataclasses.replace(
        config.instruction, timm_name=config.vision.timm_name, pretrained=config.vision.pretrained,
        feature="logits", share_vision_backbone=True,
    )
    return config.replace(instruction=instruction, head=dataclasses.replace(config.head, use_vir=use_vir))


def test_cached_inputs_give_the_end_to_end_embedding() -> None:
    torch.manual_seed(0)
    model = encoders.create_model(_shared_config()).eval()
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        inputs = model_ops.image_inputs(model, pixels)
        assert "instruction_feature" not in inputs  # recomputed from the cached global token instead
        torch.testing.assert_close(model_ops.embed_images(model, inputs), model.encode_image(pixels))


def test_one_cache_serves_vir_on_and_off_and_any_instruction_weights() -> None:
    torch.manual_seed(0)
    with_vir = encoders.create_model(_shared_config(use_vir=True))
    torch.manual_seed(0)
    without_vir = encoders.create_model(_shared_config(use_vir=False))
    assert model_ops.backbone_identity(with_vir) == model_ops.backbone_identity(without_vir)
    with torch.no_grad():
        with_vir.instruction.classifier.weight.add_(1.0)
    assert model_ops.backbone_identity(with_vir) == model_ops.backbone_identity(without_vir)
    with torch.no_grad():
        next(with_vir.vision.parameters()).add_(1.0)
    assert model_ops.backbone_identity(with_vir) != model_ops.backbone_identity(without_vir)


def test_text_padding_past_the_batchs_longest_caption_is_cut_and_changes_nothing() -> None:
    """Cached captions come padded to their dataset's longest; the tail runs only up to the batch's longest."""
    torch.manual_seed(0)
    model = model_ops.build_model(TrainConfig(model="tiny-test", unfreeze_last=1)).eval()
    texts = ["a river", "many green trees beside a long road with cars", "a port"]
    with torch.no_grad():
        inputs = model_ops.text_inputs(model, texts, tail=1)
        longest = inputs["mask"].shape[1]
        padded = {key: torch.nn.functional.pad(value, [0, 0] * (value.dim() - 2) + [0, 9])
                  for key, value in inputs.items()}
        cut = model_ops.without_trailing_padding(padded)
        assert {key: value.shape[1] for key, value in cut.items()} == {key: longest for key in cut}
        torch.testing.assert_close(model_ops.embed_texts(model, padded, tail=1),
                                   model_ops.embed_texts(model, inputs, tail=1))
    assert model_ops.without_trailing_padding(inputs) is inputs  # nothing to cut: the same dict
