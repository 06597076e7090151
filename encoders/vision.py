"""Vision backbone adapter: any timm model -> (global token (B, C), patch tokens (B, N, C)).

PIR feeds VIR with 1 global token followed by the final-stage grid tokens. Three layouts are handled:
- NCHW feature maps (EfficientNet, ResNet, ConvNeXt): tokens = the H x W map flattened, global = timm's pooled
  pre-logits feature (for EfficientNet the global average of that map);
- NHWC feature maps (Swin): tokens = the H x W tokens, global = their mean (what PIR uses);
- token sequences (ViT-like): tokens = the sequence without prefix tokens, global = timm's pre-logits pooling.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from PIL import Image
from torch import nn

from encoders import efficientnet_weights
from encoders.model_config import NO_PRETRAINED, PACKAGED_TIMM_NAMES, TIMM_HUB, VisionConfig
from engine.errors import ConfigError

SUGGESTIONS = 5
_NCHW, _NHWC, _SEQUENCE = "NCHW", "NHWC", "NLC"


def create_timm_model(
    timm_name: str, pretrained: str, num_classes: int, field: str, kwargs: dict[str, Any] | None = None
) -> nn.Module:
    """Create a timm model, loading weights from the named source; unknown names list close known ones."""
    if not timm.is_model(timm_name):
        known = timm.list_models()
        close = difflib.get_close_matches(timm_name.split(".")[0], known, n=SUGGESTIONS, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ConfigError(f"{field}: unknown timm model {timm_name!r}{hint}")
    extra = dict(kwargs or {})
    try:
        if pretrained in PACKAGED_TIMM_NAMES:
            model = timm.create_model(timm_name, pretrained=False, **extra)
            efficientnet_weights.load_into_timm(model, pretrained)
            if num_classes != efficientnet_weights.IMAGENET_CLASSES:  # keep the trained ImageNet head otherwise
                model.reset_classifier(num_classes)
            return model
        if pretrained not in (TIMM_HUB, NO_PRETRAINED):
            raise ConfigError(f"{field}: unknown pretrained source {pretrained!r}")
        return timm.create_model(timm_name, pretrained=pretrained == TIMM_HUB, num_classes=num_classes, **extra)
    except ConfigError:
        raise
    except TypeError as error:
        raise ConfigError(f"{field}: timm rejected the options for {timm_name!r} ({error})") from error
    except (OSError, RuntimeError, ValueError) as error:
        raise ConfigError(
            f"{field}: could not load {pretrained} weights for {timm_name!r} (offline? {str(error).splitlines()[0]})"
        ) from error


@dataclass(frozen=True)
class TokenLayout:
    """How the backbone's ``forward_features`` output is arranged, probed once at build time."""

    layout: str
    width: int
    num_tokens: int
    prefix_tokens: int = 0


class VisionBackbone(nn.Module):
    """Wraps a timm model; ``forward`` returns ``(global_token (B, C), patch_tokens (B, N, C))``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.model = create_timm_model(
            config.timm_name, config.pretrained, num_classes=0, field="vision.timm_name", kwargs=config.timm_kwargs
        )
        self.data_config = timm.data.resolve_model_data_config(self.model)
        self.data_config["input_size"] = (3, config.image_size, config.image_size)
        self.token_layout = self._probe_layout()
        if self.token_layout.num_tokens != config.token_grid**2:
            raise ConfigError(
                f"vision.token_grid {config.token_grid} expects {config.token_grid**2} tokens but {config.timm_name} "
                f"gives {self.token_layout.num_tokens} at vision.image_size {config.image_size}"
            )

    @property
    def width(self) -> int:
        return self.token_layout.width

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(pixels)
        return self.tokens_from_features(features)

    def tokens_from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.token_layout.layout
        if layout == _NCHW:
            tokens = features.flatten(2).transpose(1, 2)
            global_token = self.model.forward_head(features, pre_logits=True)
        elif layout == _NHWC:
            tokens = features.flatten(1, 2)
            global_token = tokens.mean(dim=1)
        else:
            tokens = features[:, self.token_layout.prefix_tokens :]
            global_token = self.model.forward_head(features, pre_logits=True)
        return global_token, tokens

    def image_transform(self, train: bool = False) -> Callable[[Image.Image], torch.Tensor]:
        """timm's preprocessing for this model (e.g. mean = std = 0.5 for the TF-ported EfficientNet-Lite0)."""
        return timm.data.create_transform(**self.data_config, is_training=train)

    def _probe_layout(self) -> TokenLayout:
        size = self.config.image_size
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            features = self.model.forward_features(torch.zeros(1, 3, size, size))
        self.model.train(was_training)
        width = int(self.model.num_features)
        if features.ndim == 3:
            prefix = int(getattr(self.model, "num_prefix_tokens", 0))
            return TokenLayout(_SEQUENCE, width, features.shape[1] - prefix, prefix)
        if features.ndim != 4:
            raise ConfigError(f"vision.timm_name {self.config.timm_name!r} has no spatial feature map or token output")
        declared = str(getattr(self.model, "output_fmt", _NCHW))
        channels_last = features.shape[-1] == width and (declared == _NHWC or features.shape[1] != width)
        if channels_last:
            return TokenLayout(_NHWC, width, features.shape[1] * features.shape[2])
        if features.shape[1] != width:
            raise ConfigError(
                f"vision.timm_name {self.config.timm_name!r}: feature map {tuple(features.shape)} matches neither "
                f"NCHW nor NHWC with width {width}"
            )
        return TokenLayout(_NCHW, width, features.shape[2] * features.shape[3])
