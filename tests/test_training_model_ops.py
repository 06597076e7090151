"""Cached-feature training with an instruction encoder that shares the vision pass (the offline default)."""

from __future__ import annotations

import dataclasses

import torch

import encoders
from encoders.model_config import load_config
from training import model_ops


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
