"""Strict safetensors loading shared by checkpoints and the instruction encoder.

Why one helper: the PIR reference code loads with ``strict=False``, which silently leaves missing weights at
their random initialisation. Here every key must be present, nothing extra may be there, and every shape must
match; the first problem found is described in words the caller puts into its one-line error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from engine.errors import ConfigError


def read_safetensors(path: Path, label: str) -> dict[str, torch.Tensor]:
    """All tensors of ``path``; a missing or corrupt file is a ConfigError starting with ``label``."""
    if not path.is_file():
        raise ConfigError(f"{label}: {path} not found")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ConfigError(f"{label}: {path} is not a readable safetensors file ({error})") from error


def state_problem(saved: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str | None:
    """The first reason ``saved`` cannot be loaded strictly where ``expected`` is, in words, or None.

    'missing key K; m missing, u unexpected', 'unexpected key K; ...', or 'K has shape (a,), expected (b,)'."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        what = f"missing key {missing[0]}" if missing else f"unexpected key {unexpected[0]}"
        return f"{what}; {len(missing)} missing, {len(unexpected)} unexpected"
    for key, tensor in saved.items():
        if tensor.shape != expected[key].shape:
            return f"{key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}"
    return None
