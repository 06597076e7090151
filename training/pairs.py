"""Training samples: one (image, caption) pair per caption of the train split, plus its image and class ids.

Why pairs and not images: PIR trains on one entry per caption, so each epoch sees every caption once and an
image appears up to five times. The loss builds its positive mask from the image ids, so a batch holding two
captions of the same image is handled correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.data.model import Dataset
from engine.errors import ConfigError, DataError

NO_CLASS = -1


@dataclass(frozen=True)
class Pair:
    image_id: int
    image_row: int  # position of the image in ``PairSet.image_ids`` (row in feature caches)
    caption_row: int  # position of the caption in ``PairSet.texts``
    class_id: int  # index into ``PairSet.class_names``, or NO_CLASS
    caption_group: int  # pairs whose captions read the same (``caption_key``) share it


def caption_key(text: str) -> str:
    """What makes two captions "the same caption": case, spacing and a final full stop ignored.

    UCM-captions' 8,400 training captions hold only 1,636 distinct strings, most shared by several images."""
    return " ".join(text.lower().split()).rstrip(" .")


@dataclass
class PairSet:
    """The pairs of one split, with the image and caption order used by caches and evaluation."""

    pairs: list[Pair]
    image_ids: list[int]
    image_paths: list[str]
    texts: list[str]
    text_to_image: list[int]  # image row of each caption
    class_names: list[str]

    @property
    def has_classes(self) -> bool:
        return all(pair.class_id != NO_CLASS for pair in self.pairs)


def build_pairs(dataset: Dataset, split: str, class_names: list[str] | None = None) -> PairSet:
    """Pairs of one split of ``dataset``; raises ``DataError`` when the split has no captioned image."""
    part = dataset.split(split)
    names = class_names if class_names is not None else dataset.classes
    class_index = {name: index for index, name in enumerate(names)}
    by_image = part.captions_by_image()
    image_ids, paths, texts, owners, pairs = [], [], [], [], []
    groups: dict[str, int] = {}
    for image in part.images:
        captions = by_image.get(image.image_id, [])
        if not captions:
            continue
        row = len(image_ids)
        image_ids.append(image.image_id)
        paths.append(str(image.path))
        class_id = class_index.get(image.label, NO_CLASS) if image.label is not None else NO_CLASS
        for caption in captions:
            group = groups.setdefault(caption_key(caption.text), len(groups))
            pairs.append(Pair(image.image_id, row, len(texts), class_id, group))
            texts.append(caption.text)
            owners.append(row)
    if not pairs:
        raise DataError(f"{dataset.root}: the {split!r} split has no captioned images "
                        f"(splits present: {dataset.split_counts()})")
    return PairSet(pairs, image_ids, paths, texts, owners, list(names))


def without_repeated_captions(pairs: PairSet) -> PairSet:
    """``pairs`` with each image's repeated captions kept once (same ``caption_key``; RSICD fills 4,851 of its
    9,828 train+val images' five lines with one sentence). Image and caption rows are unchanged, so the feature
    cache of the full pair set serves this one too."""
    seen: set[tuple[int, int]] = set()
    kept = []
    for pair in pairs.pairs:
        key = (pair.image_id, pair.caption_group)
        if key not in seen:
            seen.add(key)
            kept.append(pair)
    return PairSet(kept, pairs.image_ids, pairs.image_paths, pairs.texts, pairs.text_to_image, pairs.class_names)


def check_affiliation_possible(pairs: PairSet, dataset: Dataset) -> str | None:
    """The affiliation loss clusters on scene classes: refuse a dataset without any, naming the fix; when only
    some images lack one (RSICD's numeric file names), the loss leaves those out: the returned note says so."""
    missing = sum(pair.class_id == NO_CLASS for pair in pairs.pairs)
    if missing == len(pairs.pairs):
        raise DataError(f"{dataset.root}: none of the {len(pairs.pairs)} training pairs has a scene class label, "
                        "which the affiliation loss needs; train with --no-affiliation")
    if missing:
        return (f"{dataset.root}: {missing:,} of {len(pairs.pairs):,} training pairs have no scene class; the "
                "affiliation loss leaves them out (the contrastive loss uses them)")
    return None


def check_batch_size(batch_size: int, pairs: PairSet | int, world_size: int) -> None:
    """A batch larger than the epoch would silently shrink to one partial batch: refuse it instead.

    ``pairs`` is the training set, or the number of pairs an epoch draws (mixed training)."""
    count = pairs if isinstance(pairs, int) else len(pairs.pairs)
    if batch_size > count:
        raise ConfigError(f"--batch-size {batch_size} is larger than the training set ({count} "
                          f"image-caption pairs); use --batch-size {count} or less")
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} (global) is not divisible by the {world_size} processes")


class ImagePairs(torch.utils.data.Dataset):
    """Pairs read from image files through the model's training transform (used when backbones train)."""

    def __init__(self, pairs: PairSet, transform, masker=None) -> None:
        self.pairs = pairs
        self.transform = transform
        self.masker = masker  # training.train_masks.TrainingMasks: background masks on the training images

    def __len__(self) -> int:
        return len(self.pairs.pairs)

    def __getitem__(self, index: int):
        from engine.data.images import load_rgb

        pair = self.pairs.pairs[index]
        path = self.pairs.image_paths[pair.image_row]
        image = load_rgb(path)
        if self.masker is not None:
            image = self.masker(path, image)
        pixels = self.transform(image)
        return pixels, self.pairs.texts[pair.caption_row], pair.image_id, pair.class_id, pair.caption_group


def collate_image_pairs(items):
    pixels, texts, image_ids, class_ids, groups = zip(*items)
    return {"pixels": torch.stack(pixels), "texts": list(texts),
            "image_ids": torch.tensor(image_ids, dtype=torch.long),
            "class_ids": torch.tensor(class_ids, dtype=torch.long),
            "caption_groups": torch.tensor(groups, dtype=torch.long)}
