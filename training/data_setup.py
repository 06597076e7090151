"""Turn a Dataset + TrainConfig into train/val loaders, using cached backbone features when asked.

Why one sampler for every case: ``DistributedSampler`` with one replica is an ordinary seeded shuffle, and
with N replicas the union of the N per-rank batches of a step is exactly the single-process batch of that step
(rank r takes every N-th index). So DDP and single-process runs see the same global batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from engine.data.model import Dataset
from training import distributed, model_ops
from training.config import TrainConfig
from training.distributed import DistInfo
from training.mix import Mix
from training.feature_cache import (CachedPairs, SplitFeatures, cache_key, collate_cached, compute_features,
                                    load_features, save_features)
from training.pairs import (ImagePairs, PairSet, build_pairs, check_affiliation_possible, check_batch_size,
                            collate_image_pairs)
from training.seeding import seed_dataloader_worker
from training.train_masks import TrainingMasks

VAL_SPLIT = "val"
TRAIN_SPLIT = "train"


@dataclass
class TrainingData:
    train_pairs: PairSet
    val_pairs: PairSet
    train_loader: DataLoader
    sampler: DistributedSampler  # or a MixSampler (training/mix_sampler.py) for a mix of datasets
    cached: bool
    train_dataset: torch.utils.data.Dataset
    val_features: SplitFeatures | None = None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        parts = getattr(self.train_dataset, "datasets", [self.train_dataset])  # a mix: one part per dataset
        for part in parts:
            if isinstance(part, CachedPairs):
                part.set_epoch(epoch)


def prepare_data(dataset: Dataset | Mix, config: TrainConfig, model, device: torch.device,
                 info: DistInfo) -> TrainingData:
    if isinstance(dataset, Mix):
        from training.mix_data import prepare_mixed_data

        return prepare_mixed_data(dataset, config, model, device, info)
    train_pairs = build_pairs(dataset, TRAIN_SPLIT)
    val_pairs = build_pairs(dataset, VAL_SPLIT, class_names=train_pairs.class_names)
    if config.use_affiliation:
        check_affiliation_possible(train_pairs, dataset)
    check_batch_size(config.batch_size, train_pairs, info.world_size)
    val_features = None
    masker = TrainingMasks.from_config(config, train_pairs)
    if config.feature_cache:
        folder = Path(config.feature_cache)
        train_features = _cached_features(folder, model, train_pairs, config.cached_views, config, device, info,
                                          masker)
        val_features = _cached_features(folder, model, val_pairs, 1, config, device, info)
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
    return TrainingData(train_pairs, val_pairs, loader, sampler, bool(config.feature_cache), train_dataset,
                        val_features)


def _cached_features(folder: Path, model, pairs: PairSet, views: int, config: TrainConfig, device: torch.device,
                     info: DistInfo, masker: TrainingMasks | None = None) -> SplitFeatures:
    """Load the cache file for this (backbones, data, views[, masks]), computing it on rank 0 first if absent."""
    tail = config.unfreeze_last  # > 0: cache the trunk before the trainable tail blocks
    identity = model_ops.backbone_identity(model, tail) + (masker.describe() if masker else "")
    path = folder / f"features-{cache_key(identity, pairs, views)}.safetensors"
    if info.is_main and not path.is_file():
        transform = model.image_transform(train=False)

        def batches():
            from engine.data.images import load_rgb
            for start in range(0, len(pairs.image_paths), config.eval_batch_size):
                chunk = pairs.image_paths[start:start + config.eval_batch_size]
                images = [load_rgb(p) for p in chunk]
                if masker is not None:
                    images = [masker(p, image) for p, image in zip(chunk, images)]
                yield torch.stack([transform(image) for image in images]).to(device)

        was_training = model.training
        model.eval()  # backbones as at inference: BatchNorm statistics untouched, dropout off
        try:
            features = compute_features(pairs, views, batches,
                                        lambda pixels: model_ops.image_inputs(model, pixels, tail),
                                        lambda texts: model_ops.text_inputs(model, texts, tail),
                                        config.eval_batch_size)
        finally:
            model.train(was_training)
        save_features(features, path)
    distributed.barrier()
    return load_features(path)
