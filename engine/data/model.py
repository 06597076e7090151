"""The one in-memory description of a dataset, shared by training, indexing and evaluation.

Every reader (Karpathy JSON, PIR JSON, scene folders, plain image folders) produces a ``Dataset``; nothing
downstream looks at the original file format again.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    """One image: a stable integer id, its file, its split and (when known) its scene class."""

    image_id: int
    path: Path  # absolute path to the image file
    split: str | None  # "train" | "val" | "test", or None for unsplit collections
    label: str | None  # scene class name, or None when not derivable
    chip: object | None = None  # a chip of a GeoTIFF scene (engine.data.geo_scenes.ChipSpec); None = whole file

    def relative_path(self, root: Path) -> str:
        """Path relative to the dataset root, with forward slashes (what indexes and manifests store)."""
        try:
            return self.path.relative_to(root).as_posix()
        except ValueError:
            return self.path.as_posix()


@dataclass(frozen=True)
class Caption:
    """One caption of one image; ``caption_id`` is unique within the dataset."""

    caption_id: int
    image_id: int
    text: str


@dataclass
class Dataset:
    """Images and captions of one collection, with where it came from.

    ``kind`` names the detected format/manifest (e.g. "ucm_captions", "rsicd", "aid", "images").
    ``unlabelled`` lists image paths (relative to ``root``) whose scene class could not be derived (reported,
    not fatal).
    """

    name: str
    kind: str
    root: Path
    images: list[ImageRecord]
    captions: list[Caption]
    annotation_file: Path | None = None
    unlabelled: list[str] = field(default_factory=list)
    format: str = ""  # the file format read: "karpathy", "pir", "precomp", "scene_folders" or "images"
    notes: list[str] = field(default_factory=list)  # what a command should say once about how it was read

    def __post_init__(self) -> None:
        self._by_id = {image.image_id: image for image in self.images}

    # -- lookups -----------------------------------------------------------------------------------
    def image(self, image_id: int) -> ImageRecord:
        return self._by_id[image_id]

    def split(self, name: str) -> "Dataset":
        """The subset of one split (images and their captions), keeping ids unchanged."""
        return self.subset([image.image_id for image in self.images if image.split == name], f"{self.name}:{name}")

    def subset(self, image_ids: list[int], name: str) -> "Dataset":
        """The given images (in dataset order) and their captions, keeping ids unchanged."""
        keep = set(image_ids)
        images = [image for image in self.images if image.image_id in keep]
        captions = [caption for caption in self.captions if caption.image_id in keep]
        kept_names = {image.relative_path(self.root) for image in images} | {image.path.name for image in images}
        return Dataset(
            name=name,
            kind=self.kind,
            root=self.root,
            images=images,
            captions=captions,
            annotation_file=self.annotation_file,
            unlabelled=[name_ for name_ in self.unlabelled if name_ in kept_names],
            format=self.format,
            notes=list(self.notes),
        )

    def identity(self) -> dict[str, object]:
        """What tells this collection apart wherever it is copied: its name, detected kind, image count and a
        digest of its sorted relative file names (models record it for the data they trained on)."""
        listing = "\n".join(sorted(image.relative_path(self.root) for image in self.images))
        return {"name": self.name, "kind": self.kind, "images": len(self.images),
                "listing": hashlib.sha256(listing.encode()).hexdigest()[:16]}

    def captions_by_image(self) -> dict[int, list[Caption]]:
        grouped: dict[int, list[Caption]] = {image.image_id: [] for image in self.images}
        for caption in self.captions:
            grouped.setdefault(caption.image_id, []).append(caption)
        return grouped

    # -- summaries ---------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return sorted({image.label for image in self.images if image.label is not None})

    @property
    def has_labels(self) -> bool:
        return bool(self.images) and all(image.label is not None for image in self.images)

    def split_counts(self) -> dict[str, int]:
        counts = Counter(image.split or "none" for image in self.images)
        return _in_split_order(counts)

    def caption_split_counts(self) -> dict[str, int]:
        split_of = {image.image_id: image.split or "none" for image in self.images}
        counts = Counter(split_of[caption.image_id] for caption in self.captions)
        return _in_split_order(counts)


def _in_split_order(counts: Counter[str]) -> dict[str, int]:
    """train, val, test first (the order people read them in), then anything else ("none") by name."""
    order = {name: position for position, name in enumerate(SPLITS)}
    return dict(sorted(counts.items(), key=lambda item: (order.get(item[0], len(SPLITS)), item[0])))
