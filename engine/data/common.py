"""Helpers shared by the readers: JSON loading with one-line errors, image-folder resolution, file checks."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.data.images import IMAGE_SUFFIXES
from engine.data.model import Caption, ImageRecord
from engine.data.problems import ProblemLog
from engine.errors import DataError

# How many listed file names are tried when choosing among candidate image folders.
_RESOLVE_PROBES = 8


def read_json(path: Path) -> Any:
    """Parsed JSON, or ``DataError`` naming the file and the position of the syntax error.

    A UTF-8 byte-order mark (Windows editors write one) is accepted and ignored."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}); expected a JSON annotation file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty; expected a JSON annotation file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


def is_image_file(path: Path) -> bool:
    """An image by its name, and a regular file (an entry that cannot even be examined is not one)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
        return False
    try:
        return path.is_file()
    except OSError:
        return False


def is_folder(path: Path) -> bool:
    """A folder (one that cannot even be examined, e.g. a process's ``cwd`` under ``/proc``, is not)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, in natural order (``2.jpg`` before ``10.jpg``); a folder that
    cannot be listed has none."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted((p for p in entries if is_image_file(p)), key=natural_key)


def natural_key(path: Path) -> tuple[Any, ...]:
    """Sort key that orders embedded numbers numerically, so ids follow the dataset's own numbering."""
    import re

    parts = re.split(r"(\d+)", path.name.lower())
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts)


def resolve_image_dir(root: Path, candidates: Sequence[str], relative_names: Iterable[str]) -> Path:
    """The folder (among ``root/<candidate>`` and ``root``) that holds the listed files.

    Published archives differ (RSICD unpacks to ``RSICD_images/``, UCM to ``images/`` or ``imgs/``), so the
    folder is chosen by where the first listed files actually are; when none are found, the first existing
    candidate is used and the missing files are reported against it.
    """
    probes = [name for _, name in zip(range(_RESOLVE_PROBES), relative_names)]
    folders = [root / name for name in candidates if (root / name).is_dir()] + [root]
    best, best_hits = folders[0], -1
    for folder in folders:
        hits = sum((folder / name).is_file() for name in probes)
        if hits > best_hits:
            best, best_hits = folder, hits
    return best


def check_image_files(images: Iterable[ImageRecord], log: ProblemLog, source: str) -> None:
    """Report listed images that are missing or empty (a cheap ``stat``; decoding is ``data check``'s job)."""
    for image in images:
        try:
            size = image.path.stat().st_size
        except OSError:
            log.error("missing-image", str(image.path), f"image listed in {source} not found")
            continue
        if not image.path.is_file():
            log.error("missing-image", str(image.path), f"image listed in {source} is not a file")
        elif size == 0:
            log.error("empty-image", str(image.path), "image file is empty (0 bytes)")


def check_caption_coverage(
    images: Iterable[ImageRecord], captions: Iterable[Caption], log: ProblemLog, source: str
) -> None:
    """Every image of a caption dataset needs at least one usable caption, or it cannot be trained or scored."""
    captioned = {caption.image_id for caption in captions}
    for image in images:
        if image.image_id not in captioned:
            log.error("no-captions", f"{source}: {image.path.name}", "image has no (non-empty) captions")
