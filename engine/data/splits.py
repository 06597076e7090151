"""The fixed held-out split of unsplit scene-class collections (AID, any ``<Class>/<image>`` tree).

Scene folders carry no train/val/test split. Every part of the engine that needs one (the instruction encoder,
mixed retrieval training, the zero-shot scene benchmark) takes it from here, so the images one of them holds out
are the images the others hold out: per class, a seeded shuffle of the files in natural order; the first
``train_fraction`` train, the rest held out. With the defaults, AID's 10,000 images split 8,000 / 2,000.
"""

from __future__ import annotations

import dataclasses
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


DEFAULT_VAL_FRACTION = 0.1  # of a merged train split, when no published val size is known


def val_count(train_images: int, published: tuple[int, int] | None = None) -> int:
    """How many images a merged train split gives up to val: the published val size when the train split is
    exactly the published train + val (``published`` = (train, val); RSICD: 8,734 + 1,094 = 9,828), otherwise
    ``DEFAULT_VAL_FRACTION`` of it (at least one image, and at least one left to train on)."""
    if published is not None and published[1] > 0 and sum(published) == train_images:
        return published[1]
    return min(train_images - 1, max(1, round(train_images * DEFAULT_VAL_FRACTION)))


def carve_val(dataset: Dataset, count: int, seed: int = DEFAULT_SPLIT_SEED) -> Dataset:
    """``dataset`` with ``count`` of its train images moved to a new val split, class-stratified and seeded.

    Each scene class (images without one form their own stratum) gives a share proportional to its size (largest
    remainders make the total exact); within a class the images are a seeded shuffle of id order, so the same
    files and seed always give the same val split. Captions and ids are unchanged."""
    train = [image for image in dataset.images if image.split == "train"]
    if not 0 < count < len(train):
        raise DataError(f"{dataset.root}: cannot move {count} of {len(train)} train images to val")
    strata: dict[str, list[int]] = {}
    for image in train:
        strata.setdefault(image.label if image.label is not None else "", []).append(image.image_id)
    quotas = {label: len(ids) * count / len(train) for label, ids in strata.items()}
    shares = {label: int(quota) for label, quota in quotas.items()}
    by_remainder = sorted(strata, key=lambda label: (-(quotas[label] - shares[label]), label))
    for label in by_remainder[: count - sum(shares.values())]:
        shares[label] += 1
    moved: set[int] = set()
    for label in sorted(strata):
        ids = list(strata[label])
        random.Random(f"{seed}:val:{label}").shuffle(ids)
        moved.update(ids[: shares[label]])
    images = [dataclasses.replace(image, split="val") if image.image_id in moved else image
              for image in dataset.images]
    return dataclasses.replace(dataset, images=images)
