"""Learning-rate schedule: linear warm-up over the first fraction of steps, then linear decay to zero."""

from __future__ import annotations

import math

import torch


def warmup_linear_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    warmup_steps = max(1, math.ceil(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    return max(0.0, (total_steps - step) / remaining)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_linear_factor(step, total_steps, warmup_fraction))
