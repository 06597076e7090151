"""Cheap checks of paths and flags that commands run *before* loading a model (which takes seconds).

A missing ``--image``, an unwritable ``--html`` or ``--out`` or a mistyped ``--model`` should be one
error line at once, not after the model has loaded (or after a ten-minute evaluation). Each function raises an
``EngineError`` subclass naming the flag and what was expected, and imports nothing heavy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine.devices import check_device  # noqa: F401  (the commands call preflight.check_device)
from engine.errors import ConfigError, DataError

def model_choice(model: str | None, checkpoint: str | None) -> tuple[str | None, str]:
    """The model folder of ``--model`` or its old name ``--checkpoint`` (hidden; kept for one release), and the
    flag the user typed, for error lines."""
    if model is not None and checkpoint is not None and model != checkpoint:
        raise ConfigError("--model and --checkpoint (its old name) name different models; pass only --model")
    return (checkpoint, "--checkpoint") if model is None and checkpoint is not None else (model, "--model")


# a shipped model's name (``ucm-v1``): no path separator; encoders.load_model says which names exist
_MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


def check_checkpoint_folder(spec: str | None, flag: str = "--model", named: tuple[str, ...] = ("default",)
                            ) -> None:
    """A model folder must exist (``named`` specs and shipped model names are not paths)."""
    if spec is None or spec in named:
        return
    if not Path(spec).expanduser().is_dir() and not _MODEL_NAME.fullmatch(spec):
        raise ConfigError(f"{flag} {spec}: model checkpoint folder not found")


def check_image_file(path: Path, flag: str = "--image") -> None:
    """The query image exists and decodes (the header and all pixels: cheap next to a model load)."""
    from engine.data.images import probe_image

    probe = probe_image(path, full_decode=True)
    if not probe.ok:
        raise DataError(f"{flag} {path}: {probe.problem}")


def check_output_file(path: Path, flag: str) -> None:
    """``path`` can be written: not a folder, and its folder exists (or can be created below a writable one)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path}: file is not writable")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: folder {existing} is not writable")
