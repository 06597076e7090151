"""Instruction encoder: a scene classifier whose feature becomes VIR's instruction v_ins.

PIR uses a ResNet-50 fine-tuned on AID (30 scene classes) and frozen during retrieval training; its pooled
feature, linearly projected (the projection lives in VIR and is trained with retrieval), is the instruction.
Here the backbone is any timm model (EfficientNet-Lite0 by default, initialised from the packaged ImageNet weights).

``engine train-instruction`` trains it through ``features`` / ``logits`` / ``classifier_parameters`` /
``backbone_parameters`` and stores the result with ``save_weights``; retrieval training loads it frozen.

Sharing: with ``share_vision_backbone`` the encoder owns no backbone and reuses the pooled feature the vision
backbone already computed (one forward pass instead of two, which halves image encoding time on CPU). This is
only valid when the instruction backbone would be the very same network on the very same input, i.e. when only
the classifier is trained on AID; use ``feature: "logits"`` then, otherwise the instruction carries no scene
information beyond the vision feature itself. When ``engine train-instruction --unfreeze-last N`` also trained the
last backbone stages on AID, the weights file carries those tensors under ``shared_backbone.`` and the model
applies them to the shared vision backbone (``shared_backbone_state``), with or without VIR: still one network,
now AID-adapted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from encoders.model_config import InstructionConfig
from encoders.vision import create_timm_model
from encoders.strict_load import read_safetensors, state_problem
from engine.atomic import replace_atomically
from engine.errors import ConfigError

SHARED_BACKBONE_PREFIX = "shared_backbone."


class InstructionEncoder(nn.Module):
    """Scene classifier; frozen (eval mode, no gradients) unless ``unfreeze()`` is called for its own training."""

    def __init__(self, config: InstructionConfig, shared_width: int | None = None) -> None:
        super().__init__()
        self.config = config
        if config.share_vision_backbone:
            if shared_width is None:
                raise ConfigError("instruction.share_vision_backbone needs the vision backbone's width")
            self.backbone: nn.Module | None = None
            self.pooled_width = shared_width
        else:
            self.backbone = create_timm_model(config.timm_name, config.pretrained, 0, field="instruction.timm_name")
            self.pooled_width = int(self.backbone.num_features)
        self.classifier = nn.Linear(self.pooled_width, config.num_classes)
        if config.weights:
            self.load_weights(Path(config.weights))
        self.frozen = False
        self.freeze()

    @property
    def feature_dim(self) -> int:
        """Width of the instruction feature before VIR's projection."""
        return self.config.num_classes if self.config.feature == "logits" else self.pooled_width

    def freeze(self) -> None:
        self.frozen = True
        self.requires_grad_(False)
        self.eval()

    def unfreeze(self) -> None:
        """Make every weight trainable (used by ``engine train-instruction`` only)."""
        self.frozen = False
        self.requires_grad_(True)

    def train(self, mode: bool = True) -> InstructionEncoder:
        # A frozen encoder must keep BatchNorm statistics and dropout in inference mode even when the
        # surrounding retrieval model switches to training.
        return super().train(mode and not self.frozen)

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [] if self.backbone is None else list(self.backbone.parameters())

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled backbone feature (B, pooled_width)."""
        if self.backbone is None:
            raise ConfigError("this instruction encoder shares the vision backbone; pass its pooled feature instead")
        return self.backbone(pixels)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixels))

    def instruction_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The instruction feature (B, feature_dim) from an already computed pooled feature."""
        return self.classifier(pooled) if self.config.feature == "logits" else pooled

    def instruction_feature(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.instruction_from_pooled(self.features(pixels))

    def save_weights(self, path: Path, shared_backbone_state: dict[str, torch.Tensor] | None = None) -> None:
        """Write all weights (backbone + classifier, plus any shared-backbone tensors) via a temporary file."""
        if shared_backbone_state and not self.config.share_vision_backbone:
            raise ConfigError("shared-backbone tensors only fit an instruction encoder with share_vision_backbone")
        state = {key: value.detach().contiguous().cpu() for key, value in self.state_dict().items()}
        state.update({SHARED_BACKBONE_PREFIX + key: value.detach().contiguous().cpu()
                      for key, value in (shared_backbone_state or {}).items()})
        metadata = {"timm_name": self.config.timm_name, "classes": str(self.config.num_classes)}
        replace_atomically(path, lambda temp: save_file(state, str(temp), metadata=metadata))

    def load_weights(self, path: Path) -> None:
        """Strict load: every key present, nothing extra, every shape equal."""
        state = _without_shared_backbone(read_safetensors(path, "instruction.weights"), self.config, path)[0]
        expected = self.state_dict()
        problem = state_problem(state, expected)
        if problem:
            raise ConfigError(f"instruction.weights: {path} does not fit {self.config.timm_name} with "
                              f"{self.config.num_classes} classes ({problem})")
        self.load_state_dict(state, strict=True)


def shared_backbone_state(config: InstructionConfig) -> dict[str, torch.Tensor]:
    """The AID-trained vision-backbone tensors stored with the instruction weights (names inside the timm
    network); empty when there are none. Only a config that shares the vision backbone may carry them."""
    if not config.weights:
        return {}
    path = Path(config.weights)
    return _without_shared_backbone(read_safetensors(path, "instruction.weights"), config, path)[1]


def _without_shared_backbone(state: dict[str, torch.Tensor], config: InstructionConfig,
                             path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the encoder's own tensors, the shared-backbone tensors without their prefix); refuses the latter when the
    config's encoder has a backbone of its own."""
    own = {key: value for key, value in state.items() if not key.startswith(SHARED_BACKBONE_PREFIX)}
    shared = {key.removeprefix(SHARED_BACKBONE_PREFIX): value for key, value in state.items()
              if key.startswith(SHARED_BACKBONE_PREFIX)}
    if shared and not config.share_vision_backbone:
        raise ConfigError(f"instruction.weights: {path} holds shared-backbone tensors, but this config's "
                          "instruction encoder has its own backbone (share_vision_backbone is false)")
    return own, shared
