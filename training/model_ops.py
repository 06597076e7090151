"""The only place where training touches the encoders' API: build, freeze, split forward passes, save, load.

Why a separate module: the training loop, the feature cache and evaluation work on plain dicts of tensors
("image inputs" = what the frozen vision side produces, "text inputs" = what the frozen text side produces),
so that cached and live training run the same head code.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from engine.errors import ConfigError
from training.config import TrainConfig


def model_config_for(config: TrainConfig):
    from encoders.config import load_config

    model_config = load_config(config.model)
    head = dataclasses.replace(model_config.head, use_vir=config.use_vir, use_lca=config.use_lca)
    instruction = model_config.instruction
    if config.instruction_weights is not None:
        instruction = dataclasses.replace(instruction, weights=config.instruction_weights)
    return model_config.replace(head=head, instruction=instruction)


def build_model(config: TrainConfig):
    from encoders import create_model

    model = create_model(model_config_for(config))
    set_trainable(model, config)
    return model


def set_trainable(model, config: TrainConfig) -> None:
    """Freeze the backbones (and always the instruction encoder); optionally unfreeze the last N blocks."""
    model.requires_grad_(True)
    for frozen in _backbones(model):
        frozen.requires_grad_(False)
    if config.unfreeze_last > 0 or not config.freeze_backbones:
        model.unfreeze_backbone_blocks(None if not config.freeze_backbones else config.unfreeze_last)
    model.instruction_encoder.requires_grad_(False)


def _backbones(model) -> list[torch.nn.Module]:
    return [model.vision_backbone, model.text_backbone, model.instruction_encoder]


def backbone_identity(model) -> str:
    """A hash of the frozen parts' weights and config: the key of the feature cache."""
    digest = hashlib.sha256()
    digest.update(model.config.to_json().encode())
    for module in _backbones(model):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _as_dict(value) -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {"tokens": value}
    if isinstance(value, dict):
        return dict(value)
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(f"unexpected backbone output type {type(value).__name__}")


def image_inputs(model, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    return _as_dict(model.forward_image_tokens(pixels))


def text_inputs(model, texts: list[str]) -> dict[str, torch.Tensor]:
    return _as_dict(model.forward_text_tokens(texts))


def embed_images(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.encode_image_from_tokens(**{k: _upcast(v) for k, v in inputs.items()})


def embed_texts(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.encode_text_from_tokens(**{k: _upcast(v) for k, v in inputs.items()})


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.dtype == torch.float16 else tensor


def save_model(model, folder: Path) -> None:
    from encoders.checkpoint import save_checkpoint

    save_checkpoint(model, folder)


def load_weights(model, folder: Path) -> None:
    """Load a checkpoint's weights into ``model``; a config/dimension mismatch names both sides."""
    from encoders.checkpoint import load_checkpoint_into

    if not folder.is_dir():
        raise ConfigError(f"--resume {folder}: not a checkpoint folder")
    load_checkpoint_into(model, folder)
