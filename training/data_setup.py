"""Turn a Dataset + TrainConfig into train/val loaders, using cached backbone features when asked.

Why one sampler for every case: ``DistributedSampler`` with one replica is an ordinary seeded shuffle, and
with N replicas the union of the N per-rank batches of a step is exactly the single-process batch of that step
(rank r takes every N-th index). So DDP and single-process runs see the same global batches.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from engine.data.model import Dataset
from training.train_config import TrainConfig
from training.distributed import DistInfo
from training.feature_cache import CachedPairs, collate_cached
from training.loaders import TrainingData, ValSet, cached_split_features
from training.mix import Mix
from training.pairs import (ImagePairs, build_pairs, check_affiliation_possible, check_batch_size,
                            collate_image_pairs, without_repeated_captions)
from training.seeding import seed_dataloader_worker
from training.train_masks import TrainingMasks

VAL_SPLIT = "val"
TRAIN_SPLIT = "train"


def prepare_data(dataset: Dataset | Mix, config: TrainConfig, model, device: torch.device,
                 info: DistInfo) -> TrainingData:
    if isinstance(dataset, Mix):
        from training.mix_data import prepare_mixed_data

        return prepare_mixed_data(dataset, config, model, device, info)
    train_pairs = build_pairs(dataset, TRAIN_SPLIT)
    if config.repeated_captions == "once":
        train_pairs = without_repeated_captions(train_pairs)
    val_pairs = build_pairs(dataset, VAL_SPLIT, class_names=train_pairs.class_names)
    if config.use_affiliation:
        note = check_affiliation_possible(train_pairs, dataset)
        if note and info.is_main:
            print(f"note: {note}", file=sys.stderr)
    check_batch_size(config.batch_size, train_pairs, info.world_size)
    val_features = None
    masker = TrainingMasks.from_config(config, train_pairs)
    if config.feature_cache:
        folder = Path(config.feature_cache)
        train_features = cached_split_features(folder, model, train_pairs, config.cached_views, config, device, info,
                                          masker)
        val_features = cached_split_features(folder, model, val_pairs, 1, config, device, info)
        train_dataset: torch.utils.data.Dataset = CachedPairs(train_pairs, train_features, config.seed, augment=config.augment)
        collate = collate_cached
    else:
        train_dataset = ImagePairs(train_pairs, model.image_transform(train=config.augment), masker)
        collate = collate_image_pairs
    sampler = DistributedSampler(train_dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_dataset, batch_size=config.batch_size // info.world_size, sampler=sampler,
                        drop_last=True, num_workers=config.num_workers, collate_fn=collate,
                        worker_init_fn=seed_dataloader_worker, generator=generator,
                        persistent_workers=False, pin_memory=device.type == "cuda")
    return TrainingData(train_pairs, [ValSet(dataset.name, val_pairs, val_features)], loader, sampler,
                        bool(config.feature_cache), train_dataset)
