"""The fixed held-out split of unsplit scene-class collections (AID, any ``<Class>/<image>`` tree).

Scene folders carry no train/val/test split. Every part of the engine that needs one (the instruction encoder,
mixed retrieval training, the zero-shot scene benchmark) takes it from here, so the images one of them holds out
are the images the others hold out: per class, a seeded shuffle of the files in natural order; the first
``train_fraction`` train, the rest held out. With the defaults, AID's 10,000 images split 8,000 / 2,000.
"""

from __future__ import annotations

import random

from engine.data.model import Dataset
from engine.errors import DataError

DEFAULT_TRAIN_FRACTION = 0.8
DEFAULT_SPLIT_SEED = 42
MIN_IMAGES_PER_CLASS = 2
HELD_OUT = "test"  # the name the held-out part answers to (``engine eval --split test``)


def stratified_split(dataset: Dataset, train_fraction: float = DEFAULT_TRAIN_FRACTION,
                     seed: int = DEFAULT_SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Image positions of the train and held-out parts; the same inputs always give the same split."""
    if not dataset.has_labels:
        raise DataError(f"{dataset.root}: every image needs a scene class (e.g. <root>/<Class>/<image>) "
                        "to make a class-stratified split")
    by_class: dict[str, list[int]] = {}
    for position, image in enumerate(dataset.images):
        by_class.setdefault(image.label, []).append(position)
    train, test = [], []
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) < MIN_IMAGES_PER_CLASS:
            raise DataError(f"{dataset.root}: class {label!r} has {len(members)} image; "
                            f"at least {MIN_IMAGES_PER_CLASS} are needed to hold one out")
        shuffled = list(members)
        random.Random(f"{seed}:{label}").shuffle(shuffled)
        cut = min(len(shuffled) - 1, max(1, round(len(shuffled) * train_fraction)))
        train += shuffled[:cut]
        test += shuffled[cut:]
    return sorted(train), sorted(test)


def is_unsplit(dataset: Dataset) -> bool:
    return all(image.split is None for image in dataset.images)


def split_part(dataset: Dataset, split: str, train_fraction: float = DEFAULT_TRAIN_FRACTION,
               seed: int = DEFAULT_SPLIT_SEED) -> Dataset:
    """One split of ``dataset``: its own when it has splits; for an unsplit labelled collection ``train`` and
    ``test`` are the two parts of the stratified split and ``all`` is every image."""
    if split == "all":
        return dataset
    if not is_unsplit(dataset):
        return dataset.split(split)
    if split not in ("train", HELD_OUT):
        raise DataError(f"{dataset.root}: an unsplit scene collection has a train part and a held-out part "
                        f"(--split train or {HELD_OUT}, or all); got {split!r}")
    train, test = stratified_split(dataset, train_fraction, seed)
    keep = train if split == "train" else test
    return dataset.subset([dataset.images[p].image_id for p in keep], f"{dataset.name}:{split}")
