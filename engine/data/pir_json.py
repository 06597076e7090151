"""Reader for PIR's own caption files: ``<name>_train.json``, ``<name>_val.json``, ``<name>_test.json``.

Schema: a JSON list. Train files hold one entry per caption ``{"image", "caption": str, "image_id", "label"}``;
val/test files one entry per image ``{"image", "caption": [str, ...]}``. Both shapes are accepted in any file.

Ids are derived, because the files carry none that are stable across splits (PIR's ``image_id`` restarts per
file and is absent from val/test): files are read in the order train, val, test (then by file name); an image
gets the next integer id, counting from 0, the first time its ``image`` path appears; captions are numbered
from 0 in reading order. The same files therefore always give the same ids. An image listed in two splits is
an error (it would leak test images into training). ``label`` may be a class name, used as is, or an integer
class index, for which the name derived from the file name is preferred (``airport_3.jpg`` -> ``airport``) and
the index's decimal text is the fallback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.data.common import check_caption_coverage, check_image_files, read_json, resolve_image_dir
from engine.data.labels import label_from_filename
from engine.data.model import SPLITS, Caption, Dataset, ImageRecord
from engine.data.problems import ProblemLog
from engine.errors import DataError

IMAGE_DIR_NAMES = ("images", "imgs", "RSICD_images")
_SPLIT_IN_NAME = re.compile(r"(?:^|[_\-.])(train|val|test)$", re.IGNORECASE)


def looks_like_pir(document: Any) -> bool:
    """A non-empty list whose first entry has ``image`` and ``caption``."""
    return (
        isinstance(document, list)
        and bool(document)
        and isinstance(document[0], dict)
        and "image" in document[0]
        and "caption" in document[0]
    )


def split_of_file(path: Path) -> str | None:
    match = _SPLIT_IN_NAME.search(path.stem)
    return match.group(1).lower() if match else None


def dataset_prefix(path: Path) -> str:
    """``rsicd_train.json`` -> ``rsicd``: the part of a PIR file name shared by its three split files."""
    return re.sub(r"[_\-.]?(train|val|test)$", "", path.stem, flags=re.IGNORECASE)


def find_pir_files(folder: Path) -> list[Path]:
    """PIR caption files in ``folder``, ordered train, val, test, then by name."""
    found = [path for path in folder.glob("*.json") if split_of_file(path) is not None]
    return sorted(found, key=lambda path: (SPLITS.index(split_of_file(path) or "train"), path.name))


class _PirCollector:
    def __init__(self, log: ProblemLog) -> None:
        self.log = log
        self.image_ids: dict[str, int] = {}
        self.splits: dict[str, str] = {}
        self.labels: dict[str, str | None] = {}
        self.captions: list[Caption] = []

    def add_file(self, path: Path, document: Any) -> None:
        split = split_of_file(path)
        if split is None:
            self.log.error("bad-split", path.name, "cannot tell the split; expected a name ending _train/_val/_test")
            return
        if not looks_like_pir(document):
            raise DataError(f"{path}: expected a PIR caption file, a list of objects with 'image' and 'caption'")
        for index, entry in enumerate(document):
            self.add_entry(f"{path.name}: [{index}]", split, entry)

    def add_entry(self, where: str, split: str, entry: Any) -> None:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"].strip():
            self.log.error("schema", where, "expected an object with an 'image' path and a 'caption'")
            return
        image = entry["image"].strip()
        texts = entry.get("caption")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            self.log.error("schema", f"{where}.caption", "expected a string or a list of strings")
            return
        if image in self.splits and self.splits[image] != split:
            self.log.error(
                "image-in-two-splits", f"{where}.image", f"{image} is in both {self.splits[image]} and {split}"
            )
            return
        if image not in self.image_ids:
            self.image_ids[image] = len(self.image_ids)
            self.splits[image] = split
            self.labels[image] = self.parse_label(where, image, entry.get("label"))
        image_id = self.image_ids[image]
        for position, text in enumerate(texts):
            if not text.strip():
                self.log.error("empty-caption", f"{where}.caption[{position}]", f"caption of {image} is empty")
                continue
            self.captions.append(Caption(caption_id=len(self.captions), image_id=image_id, text=text.strip()))

    def parse_label(self, where: str, image: str, label: Any) -> str | None:
        if isinstance(label, str) and label.strip():
            return label.strip()
        derived = label_from_filename(image)
        if isinstance(label, int) and not isinstance(label, bool):
            return derived or str(label)
        if label is not None:
            self.log.error("schema", f"{where}.label", f"expected a class name or index, got {label!r}")
        return derived


def read_pir(files: list[Path], log: ProblemLog) -> Dataset:
    """A ``Dataset`` from PIR caption files (all in one folder); see the module docstring for ids."""
    if not files:
        raise DataError("no PIR caption files given")
    collector = _PirCollector(log)
    for path in files:
        collector.add_file(path, read_json(path))
    root = files[0].parent.resolve()
    image_dir = resolve_image_dir(root, IMAGE_DIR_NAMES, collector.image_ids)
    images: list[ImageRecord] = []
    unlabelled: list[str] = []
    for image, image_id in collector.image_ids.items():
        path = image_dir / image
        images.append(ImageRecord(image_id, path, collector.splits[image], collector.labels[image]))
        if collector.labels[image] is None:
            unlabelled.append(path.relative_to(root).as_posix())
    sources = ", ".join(path.name for path in files)
    check_image_files(images, log, sources)
    check_caption_coverage(images, collector.captions, log, sources)
    return Dataset(
        name=dataset_prefix(files[0]) or root.name,
        kind="pir",
        root=root,
        images=images,
        captions=collector.captions,
        annotation_file=files[0].resolve(),
        unlabelled=unlabelled,
        format="pir",
    )
