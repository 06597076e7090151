"""Builders for small datasets in the published schemas, written into a test's tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

TINY = (24, 24)
CAPTIONS_PER_IMAGE = 5


def make_image(path: Path, size: tuple[int, int] = TINY, mode: str = "RGB", shade: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour: Any = shade if mode in ("L", "P") else tuple([shade] * len(mode))
    Image.new(mode, size, colour).save(path)
    return path


def karpathy_entry(image_id: int, filename: str, split: str, first_caption_id: int, **extra: Any) -> dict:
    sentences = [
        {
            "tokens": ["a", "scene", str(image_id), str(k)],
            "raw": f"a scene {image_id} number {k} .",
            "imgid": image_id,
            "sentid": first_caption_id + k,
        }
        for k in range(CAPTIONS_PER_IMAGE)
    ]
    entry = {
        "filename": filename,
        "imgid": image_id,
        "split": split,
        "sentids": [s["sentid"] for s in sentences],
        "sentences": sentences,
    }
    entry.update(extra)
    return entry


def write_karpathy(
    root: Path,
    annotation: str,
    image_dir: str,
    files: list[tuple[str, str]],
    dataset_name: str | None = None,
    classes: list[str] | None = None,
    size: tuple[int, int] = TINY,
) -> Path:
    """A Karpathy JSON listing ``files`` as (file name, split), with the images written next to it."""
    entries = []
    for image_id, (filename, split) in enumerate(files):
        extra = {"class": classes[image_id]} if classes else {}
        entries.append(karpathy_entry(image_id, filename, split, image_id * CAPTIONS_PER_IMAGE, **extra))
        make_image(root / image_dir / filename, size=size, shade=20 + image_id)
    document: dict[str, Any] = {"images": entries}
    if dataset_name:
        document["dataset"] = dataset_name
    root.mkdir(parents=True, exist_ok=True)
    (root / annotation).write_text(json.dumps(document), encoding="utf-8")
    return root


def small_ucm(root: Path) -> Path:
    """Six UCM-style images (numeric names, ``class`` field) in ``images/``: 4 train, 1 val, 1 test."""
    files = [("1.jpg", "train"), ("2.jpg", "train"), ("3.jpg", "val"), ("101.jpg", "train"), ("102.jpg", "train"),
             ("103.jpg", "test")]
    classes = ["agricultural"] * 3 + ["airplane"] * 3
    return write_karpathy(root, "dataset.json", "images", files, dataset_name="ucm_captions", classes=classes)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def save_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document), encoding="utf-8")
