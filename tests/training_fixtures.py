"""Tiny generated datasets for the training tests: a Karpathy JSON with classes, and AID-like scene folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("farmland", "harbor", "forest")
COLOURS = {"farmland": (200, 180, 60), "harbor": (40, 90, 200), "forest": (30, 140, 40)}
WORDS = {"farmland": "yellow fields", "harbor": "blue water with boats", "forest": "dense green trees"}


def _image(path: Path, label: str, index: int, size: int = 40) -> None:
    rng = np.random.default_rng(index)
    base = np.array(COLOURS[label], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def write_captioned_dataset(root: Path, per_class: tuple[int, int, int] = (4, 2, 1), with_class: bool = True) -> Path:
    """Karpathy-style dataset.json; per_class = images per class in train/val/test; 3 captions per image."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries, sentence_id, image_id = [], 0, 0
    for split, count in zip(("train", "val", "test"), per_class):
        for label in CLASSES:
            for _ in range(count):
                name = f"{image_id + 1}.png"
                _image(root / "images" / name, label, image_id)
                sentences = []
                for variant in range(3):
                    raw = f"a {('small', 'large', 'wide')[variant]} area of {WORDS[label]} number {image_id}"
                    sentences.append({"raw": raw, "tokens": raw.split(), "imgid": image_id, "sentid": sentence_id})
                    sentence_id += 1
                entry = {"filename": name, "imgid": image_id, "split": split,
                         "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
                if with_class:
                    entry["class"] = label
                entries.append(entry)
                image_id += 1
    (root / "dataset.json").write_text(json.dumps({"images": entries, "dataset": "tiny"}))
    return root


def write_scene_folders(root: Path, per_class: int = 6) -> Path:
    for label in CLASSES:
        folder = root / label.capitalize()
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            # distinct seeds, fixed across processes (hash() of a str is salted per process: two images could
            # draw one seed, or a captioned dataset's, and be dropped as near-duplicates of each other)
            _image(folder / f"{label}_{index + 1}.jpg", label, 1000 + 100 * CLASSES.index(label) + index)
    return root


def tiny_cached_config(cache: Path, **changes):
    """A quick TrainConfig: the tiny-test model, one epoch, a trunk-feature cache in ``cache``; ``changes`` override."""
    from training.train_config import TrainConfig

    base = dict(model="tiny-test", epochs=1, batch_size=8, learning_rate=1e-3, eval_batch_size=16,
                feature_cache=str(cache), seed=3)
    base.update(changes)
    return TrainConfig(**base)
