"""AdamW parameter groups: weight decay only on weight matrices, never on norms, biases or temperatures.

Why: decaying LayerNorm gains, biases or the log-temperatures pulls them towards zero for no regularising
benefit (they do not scale a function's capacity); BERT/CLIP training recipes exclude them likewise.
Pretrained backbone weights that train (``--unfreeze-last``) get ``learning_rate x backbone_lr_scale``: fresh
heads need a large rate, and the same rate would wash out what the pretrained blocks know.
"""

from __future__ import annotations

import torch
from torch import nn

from training.train_config import TrainConfig

_NO_DECAY_MARKERS = ("bias", "norm", "temperature", "log_inverse", "embeddings.position", "cls_token", "pos_embed")


def parameter_groups(module: nn.Module, weight_decay: float, learning_rate: float,
                     backbone: frozenset[int] = frozenset(), backbone_lr_scale: float = 1.0) -> list[dict]:
    """Four groups: (heads | backbone ids) x (decay | no decay); always four, so optimiser states line up."""
    groups = {(part, decays): [] for part in ("heads", "backbone") for decays in (True, False)}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        lowered = name.lower()
        decays = not (parameter.ndim < 2 or any(marker in lowered for marker in _NO_DECAY_MARKERS))
        groups[("backbone" if id(parameter) in backbone else "heads", decays)].append(parameter)
    rates = {"heads": learning_rate, "backbone": learning_rate * backbone_lr_scale}
    return [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": rates[part]}
            for (part, decays), params in groups.items()]


def build_optimizer(module: nn.Module, config: TrainConfig, backbones: list[nn.Module] = ()) -> torch.optim.AdamW:
    backbone = frozenset(id(p) for part in backbones for p in part.parameters())
    groups = parameter_groups(module, config.weight_decay, config.learning_rate, backbone, config.backbone_lr_scale)
    if not any(group["params"] for group in groups):
        raise ValueError("no trainable parameters")
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas)
