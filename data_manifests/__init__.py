"""Published facts about the public remote-sensing datasets, one JSON file per dataset, with a typed loader.

``engine data check`` compares a folder against these facts: counts and class lists identify which dataset a
folder holds, and deviations are reported (fatal ones as errors, the rest as warnings). Facts the sources do not
state with certainty are listed in each manifest's ``uncertain`` field rather than silently trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from engine.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitCounts:
    """Images per split in one published split convention."""

    train: int
    val: int
    test: int

    def as_dict(self) -> dict[str, int]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class Manifest:
    """What a correct copy of one public dataset contains and how its files are laid out."""

    name: str
    title: str
    task: str  # "retrieval" (images + captions) or "scene_classification" (class folders, no captions)
    annotation_files: tuple[str, ...]  # file names the dataset's annotation JSON is published under
    image_dirs: tuple[str, ...]  # folder names the images unpack to, relative to the annotation file
    image_count: int
    caption_count: int  # 0 for scene-classification sets
    captions_per_image: int  # 0 for scene-classification sets
    splits: SplitCounts | None  # None when the dataset defines no split (AID)
    alternative_splits: tuple[tuple[str, SplitCounts], ...]  # other published conventions, by name
    class_count: int
    classes: tuple[str, ...]  # may be shorter than class_count when the full list is not certain
    image_size: tuple[int, int]  # (width, height) of the original release
    image_size_note: str
    file_pattern: str
    obtain: str  # how a user gets it, in words
    citation: str
    uncertain: tuple[str, ...]

    @property
    def split_counts(self) -> dict[str, int] | None:
        return self.splits.as_dict() if self.splits else None


def _split_counts(raw: Any) -> SplitCounts | None:
    return None if raw is None else SplitCounts(**{name: int(raw[name]) for name in SPLIT_NAMES})


def _from_json(name: str, raw: dict[str, Any]) -> Manifest:
    try:
        return Manifest(
            name=raw["name"],
            title=raw["title"],
            task=raw["task"],
            annotation_files=tuple(raw["annotation_files"]),
            image_dirs=tuple(raw["image_dirs"]),
            image_count=int(raw["image_count"]),
            caption_count=int(raw["caption_count"]),
            captions_per_image=int(raw["captions_per_image"]),
            splits=_split_counts(raw["splits"]),
            alternative_splits=tuple(
                (label, SplitCounts(**counts)) for label, counts in raw.get("alternative_splits", {}).items()
            ),
            class_count=int(raw["class_count"]),
            classes=tuple(raw["classes"]),
            image_size=(int(raw["image_size"][0]), int(raw["image_size"][1])),
            image_size_note=raw.get("image_size_note", ""),
            file_pattern=raw["file_pattern"],
            obtain=raw["obtain"],
            citation=raw["citation"],
            uncertain=tuple(raw.get("uncertain", [])),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"data_manifests/{name}.json: invalid manifest ({error!r})") from None


def manifest_names() -> list[str]:
    files = resources.files(__name__).iterdir()
    return sorted(entry.name[: -len(".json")] for entry in files if entry.name.endswith(".json"))


@lru_cache(maxsize=None)
def load_manifest(name: str) -> Manifest:
    """The manifest of one dataset (``rsicd``, ``rsitmd``, ``ucm_captions``, ``sydney_captions``, ``aid``)."""
    names = manifest_names()
    if name not in names:
        raise ConfigError(f"unknown dataset manifest {name!r}; known: {', '.join(names)}")
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    return _from_json(name, json.loads(text))


def all_manifests() -> list[Manifest]:
    return [load_manifest(name) for name in manifest_names()]
