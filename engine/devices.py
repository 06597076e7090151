"""The one place that turns a ``--device`` value into a torch device (ground layer: imports torch lazily).

Every command that encodes (``engine index``, ``engine eval``, ``engine query``/``serve``, ``engine train``)
accepts ``auto``, ``cpu`` or ``cuda``: ``auto`` picks CUDA when torch sees a device, and asking for CUDA on a
machine without one is a user error (one line, non-zero exit), not a crash deep inside torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from engine.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_device(device: str, flag: str = "--device") -> None:
    """Reject an unknown device name before anything heavy is loaded."""
    if device not in DEVICES:
        raise ConfigError(f"{flag}: expected auto, cpu or cuda, got {device!r}")


def resolve_device(requested: str = "auto") -> "torch.device":
    """``auto`` → CUDA when available else CPU; ``cuda`` without a CUDA device → ConfigError."""
    import torch

    check_device(requested)
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch on this machine")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")
