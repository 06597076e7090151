"""Reader for Karpathy-style caption JSON: RSICD ``dataset_rsicd.json``, RSITMD ``dataset_RSITMD.json``,
UCM-captions and Sydney-captions ``dataset.json``.

Schema: ``{"images": [{"filename", "imgid", "split", "sentids", "sentences": [{"raw", "tokens", "imgid",
"sentid"}], "class"?}], "dataset"?}``. ``imgid`` and ``sentid`` are kept as the image and caption ids (they are
what published splits and results refer to) and must be unique. The caption text is ``raw`` (stripped); when a
file has only ``tokens`` they are joined with spaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.data.common import check_caption_coverage, check_image_files, resolve_image_dir
from engine.data.labels import label_from_filename
from engine.data.model import SPLITS, Caption, Dataset, ImageRecord
from engine.data.problems import ProblemLog
from engine.errors import DataError

KARPATHY_FILE_NAMES = ("dataset_rsicd.json", "dataset_RSITMD.json", "dataset.json")
IMAGE_DIR_NAMES = ("RSICD_images", "images", "imgs", "Images")


def looks_like_karpathy(document: Any) -> bool:
    return isinstance(document, dict) and isinstance(document.get("images"), list)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _caption_text(sentence: dict[str, Any]) -> str | None:
    raw = sentence.get("raw")
    if isinstance(raw, str):
        return raw.strip()
    tokens = sentence.get("tokens")
    if isinstance(tokens, list) and all(isinstance(token, str) for token in tokens):
        return " ".join(tokens).strip()
    return None


class _KarpathyParser:
    """Walks the ``images`` list once, validating as it goes; problems go to the ``ProblemLog``."""

    def __init__(self, annotation: Path, log: ProblemLog) -> None:
        self.annotation = annotation
        self.log = log
        self.entries: list[tuple[int, str, str | None, str | None]] = []  # imgid, filename, split, class
        self.captions: list[Caption] = []
        self.seen_image_ids: dict[int, str] = {}
        self.seen_files: set[str] = set()
        self.seen_caption_ids: dict[int, int] = {}

    def where(self, index: int, field_name: str = "") -> str:
        suffix = f".{field_name}" if field_name else ""
        return f"{self.annotation.name}: images[{index}]{suffix}"

    def parse_entry(self, index: int, entry: Any) -> None:
        if not isinstance(entry, dict):
            self.log.error("schema", self.where(index), "expected an object with filename/imgid/split/sentences")
            return
        filename, image_id = entry.get("filename"), entry.get("imgid")
        if not isinstance(filename, str) or not filename.strip():
            self.log.error("schema", self.where(index, "filename"), "missing or not a non-empty string")
            return
        if not _is_int(image_id):
            self.log.error("schema", self.where(index, "imgid"), f"expected an integer id, got {image_id!r}")
            return
        if image_id in self.seen_image_ids:
            self.log.error(
                "duplicate-image-id",
                self.where(index, "imgid"),
                f"image id {image_id} of {filename} is already used by {self.seen_image_ids[image_id]}",
            )
            return
        if filename in self.seen_files:
            self.log.error("duplicate-image-file", self.where(index, "filename"), f"{filename} is listed twice")
            return
        self.seen_image_ids[image_id] = filename
        self.seen_files.add(filename)
        split = self.parse_split(index, entry)
        label = entry.get("class")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            self.log.error("schema", self.where(index, "class"), f"expected a class name, got {label!r}")
            label = None
        self.entries.append((image_id, filename, split, label.strip() if isinstance(label, str) else None))
        self.parse_sentences(index, image_id, filename, entry.get("sentences"))

    def parse_split(self, index: int, entry: dict[str, Any]) -> str | None:
        split = entry.get("split")
        if split in SPLITS:
            return split
        self.log.error(
            "bad-split",
            self.where(index, "split"),
            f"{split!r} for {entry['filename']} is not one of {'/'.join(SPLITS)}",
        )
        return None

    def parse_sentences(self, index: int, image_id: int, filename: str, sentences: Any) -> None:
        if not isinstance(sentences, list):
            self.log.error("schema", self.where(index, "sentences"), "expected a list of caption objects")
            return
        for position, sentence in enumerate(sentences):
            where = self.where(index, f"sentences[{position}]")
            if not isinstance(sentence, dict):
                self.log.error("schema", where, "expected an object with raw/tokens/sentid")
                continue
            caption_id, text = sentence.get("sentid"), _caption_text(sentence)
            if not _is_int(caption_id):
                self.log.error("schema", f"{where}.sentid", f"expected an integer id, got {caption_id!r}")
                continue
            if caption_id in self.seen_caption_ids:
                self.log.error(
                    "duplicate-caption-id",
                    f"{where}.sentid",
                    f"caption id {caption_id} is already used by image id {self.seen_caption_ids[caption_id]}",
                )
                continue
            if text is None:
                self.log.error("schema", f"{where}.raw", "missing caption text (neither 'raw' nor 'tokens')")
                continue
            if not text:
                self.log.error("empty-caption", f"{where}.raw", f"caption {caption_id} of {filename} is empty")
                continue
            owner = sentence.get("imgid", image_id)
            if owner != image_id:
                self.log.warning("caption-owner", f"{where}.imgid", f"says {owner!r}, its entry says {image_id}")
            self.seen_caption_ids[caption_id] = image_id
            self.captions.append(Caption(caption_id=caption_id, image_id=image_id, text=text))


def read_karpathy(annotation: Path, document: Any, log: ProblemLog) -> Dataset:
    """A ``Dataset`` from a parsed Karpathy JSON; images are looked up next to the annotation file."""
    if not looks_like_karpathy(document):
        raise DataError(f"{annotation}: expected a Karpathy caption file, an object with an 'images' list")
    parser = _KarpathyParser(annotation, log)
    for index, entry in enumerate(document["images"]):
        parser.parse_entry(index, entry)
    if not parser.entries and not log.has_errors:
        raise DataError(f"{annotation}: the 'images' list is empty")
    root = annotation.parent.resolve()
    image_dir = resolve_image_dir(root, IMAGE_DIR_NAMES, (filename for _, filename, _, _ in parser.entries))
    images: list[ImageRecord] = []
    unlabelled: list[str] = []
    for image_id, filename, split, label in parser.entries:
        label = label or label_from_filename(filename)
        path = image_dir / filename
        images.append(ImageRecord(image_id=image_id, path=path, split=split, label=label))
        if label is None:
            unlabelled.append(path.relative_to(root).as_posix())
    check_image_files(images, log, annotation.name)
    check_caption_coverage(images, parser.captions, log, annotation.name)
    name = document.get("dataset") if isinstance(document.get("dataset"), str) else annotation.stem
    return Dataset(
        name=name,
        kind="karpathy",
        root=root,
        images=images,
        captions=parser.captions,
        annotation_file=annotation.resolve(),
        unlabelled=unlabelled,
        format="karpathy",
    )
