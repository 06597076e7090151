"""AdamW parameter groups: weight decay only on weight matrices, never on norms, biases or temperatures.

Why: decaying LayerNorm gains, biases or the log-temperatures pulls them towards zero for no regularising
benefit (they do not scale a function's capacity); BERT/CLIP training recipes exclude them likewise.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import TrainConfig

_NO_DECAY_MARKERS = ("bias", "norm", "temperature", "log_inverse", "embeddings.position", "cls_token", "pos_embed")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        lowered = name.lower()
        if parameter.ndim < 2 or any(marker in lowered for marker in _NO_DECAY_MARKERS):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    groups = parameter_groups(module, config.weight_decay)
    if not any(group["params"] for group in groups):
        raise ValueError("no trainable parameters")
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.betas)
