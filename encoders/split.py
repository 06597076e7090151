"""Backbones cut in two: a frozen trunk (cacheable) and a trainable tail of the last N blocks.

Why: on a CPU, fine-tuning the last backbone stage end to end means running the whole backbone for every
training pair of every epoch. When only the tail trains, the trunk's output is the same every epoch, so
training can cache it once per image view / caption (``engine train --unfreeze-last N --feature-cache``) and
run only tail + heads, which for EfficientNet-Lite0's last stage is a 7×7 map through ~1 M parameters.

``tail(trunk(x))`` equals the backbone's own forward pass (tested), so a model trained this way is an ordinary
model at inference. The tail of an EfficientNet-style timm model is its last N stages plus ``conv_head`` /
``bn2``; of a Swin, its last N stages (``layers``) plus the final ``norm`` (the trunk output is the NHWC map
entering them); of a BERT-style encoder, its last N layers. Other layouts are refused with a one-line error.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.errors import ConfigError

# (stem modules, stage container, modules after the stages) of the timm layouts whose forward_features is
# exactly stem -> stages -> after, in that order (tested against forward_features).
STAGED_LAYOUTS = {
    "EfficientNet": (("conv_stem", "bn1"), "blocks", ("conv_head", "bn2")),
    "Swin": (("patch_embed",), "layers", ("norm",)),
}


def staged_layout(network: nn.Module) -> str | None:
    """The name of the STAGED_LAYOUTS entry ``network`` follows, or None."""
    for name, (stem, stages, after) in STAGED_LAYOUTS.items():
        if all(hasattr(network, part) for part in (*stem, stages, *after)) and isinstance(
                getattr(network, stages), nn.Sequential):
            if name == "Swin" and getattr(network, "absolute_pos_embed", None) is not None:
                continue  # forward_features would add the position embedding between stem and stages
            return name
    return None


def is_efficientnet_style(network: nn.Module) -> bool:
    return staged_layout(network) == "EfficientNet"


def _staged_parts(network: nn.Module, tail: int) -> tuple[list[nn.Module], list[nn.Module]]:
    """(trunk modules, tail modules) of a staged timm model (EfficientNet, Swin), in forward order."""
    layout = staged_layout(network)
    if layout is None:
        raise ConfigError(f"--unfreeze-last: {type(network).__name__} is neither an EfficientNet-style "
                          "(conv_stem, blocks, conv_head) nor a Swin-style (patch_embed, layers, norm) timm model; "
                          "only those can train their last stages from a cache")
    stem_names, stages_name, after_names = STAGED_LAYOUTS[layout]
    stages = list(getattr(network, stages_name))
    if not 1 <= tail < len(stages):
        raise ConfigError(f"--unfreeze-last {tail}: the vision backbone has {len(stages)} stages; "
                          f"use 1..{len(stages) - 1}")
    stem = [getattr(network, name) for name in stem_names]
    after = [getattr(network, name) for name in after_names]
    return stem + stages[:-tail], stages[-tail:] + after


def vision_tail_modules(network: nn.Module, tail: int) -> list[nn.Module]:
    """The modules ``--unfreeze-last tail`` trains: the last ``tail`` stages and everything after them."""
    return _staged_parts(network, tail)[1]


def network_trunk(network: nn.Module, pixels: torch.Tensor, tail: int) -> torch.Tensor:
    """(B, 3, H, W) -> the feature map entering the last ``tail`` stages of a staged timm network."""
    x = pixels
    for module in _staged_parts(network, tail)[0]:
        x = module(x)
    return x


def network_tail(network: nn.Module, trunk: torch.Tensor, tail: int) -> torch.Tensor:
    """Trunk map -> the network's ``forward_features`` output (the final feature map)."""
    x = trunk
    for module in _staged_parts(network, tail)[1]:
        x = module(x)
    return x


def vision_trunk(backbone, pixels: torch.Tensor, tail: int) -> torch.Tensor:
    """(B, 3, H, W) -> the feature map entering the tail (frozen part; cache it)."""
    return network_trunk(backbone.model, pixels, tail)


def vision_tail(backbone, trunk: torch.Tensor, tail: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trunk map -> (global token, patch tokens), exactly as ``VisionBackbone.forward`` would give."""
    return backbone.tokens_from_features(network_tail(backbone.model, trunk, tail))


def _bert_layers(network: nn.Module, tail: int) -> list[nn.Module]:
    layers = getattr(getattr(network, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(network, "embeddings"):
        raise ConfigError(f"--unfreeze-last: {type(network).__name__} is not a BERT-style encoder "
                          "(embeddings, encoder.layer)")
    if not 1 <= tail < len(layers):
        raise ConfigError(f"--unfreeze-last {tail}: the text backbone has {len(layers)} layers; "
                          f"use 1..{len(layers) - 1}")
    return list(layers)


def text_tail_modules(network: nn.Module, tail: int) -> list[nn.Module]:
    return _bert_layers(network, tail)[-tail:]


def _attention_mask(network: nn.Module, hidden: torch.Tensor, mask: torch.Tensor):
    """The mask in the form the model's own layers receive (padding excluded, bidirectional)."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=network.config, inputs_embeds=hidden, attention_mask=mask)


def _run_layers(network: nn.Module, layers: list[nn.Module], hidden: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    layer_mask = _attention_mask(network, hidden, mask)
    for layer in layers:
        output = layer(hidden, layer_mask)
        hidden = output[0] if isinstance(output, tuple) else output
    return hidden


def text_trunk(backbone, input_ids: torch.Tensor, mask: torch.Tensor, tail: int) -> torch.Tensor:
    """Token ids + mask -> hidden states (B, L, H) entering the last ``tail`` layers."""
    network = backbone.model
    layers = _bert_layers(network, tail)
    hidden = network.embeddings(input_ids=input_ids)
    return _run_layers(network, layers[:-tail], hidden, mask)


def text_tail(backbone, hidden: torch.Tensor, mask: torch.Tensor, tail: int) -> torch.Tensor:
    """Trunk hidden states -> last-layer hidden states, exactly as ``TextBackbone.forward`` would give."""
    network = backbone.model
    return _run_layers(network, text_tail_modules(network, tail), hidden, mask)
