"""What the trainer consumes: :class:`TrainingData` (loaders, samplers, pairs) and :func:`cached_split_features`,
one split's cached backbone features (computed on rank 0 when absent). Shared by ``training.data_setup`` (one
dataset) and ``training.mix_data`` (a mix of datasets), which both build a ``TrainingData``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from training import distributed, model_ops
from training.train_config import TrainConfig
from training.distributed import DistInfo
from training.feature_cache import (CachedPairs, SplitFeatures, cache_file, cache_key, compute_features,
                                    load_features, save_features)
from training.pairs import PairSet
from training.train_masks import TrainingMasks


@dataclass
class ValSet:
    """One val split scored after every epoch: its pairs and (cached runs) its cached backbone features."""

    name: str
    pairs: PairSet
    features: SplitFeatures | None = None


@dataclass
class TrainingData:
    train_pairs: PairSet
    val_sets: list[ValSet]  # one per dataset with a val split; the epoch is chosen on their mean mR
    train_loader: DataLoader
    sampler: DistributedSampler  # or a MixSampler (training/mix_sampler.py) for a mix of datasets
    cached: bool
    train_dataset: torch.utils.data.Dataset

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        parts = getattr(self.train_dataset, "datasets", [self.train_dataset])  # a mix: one part per dataset
        for part in parts:
            if isinstance(part, CachedPairs):
                part.set_epoch(epoch)


def cached_split_features(folder: Path, model, pairs: PairSet, views: int, config: TrainConfig, device: torch.device,
                     info: DistInfo, masker: TrainingMasks | None = None) -> SplitFeatures:
    """Load the cache file for this (backbones, data, views[, masks]), computing it on rank 0 first if absent."""
    tail = config.unfreeze_last  # > 0: cache the trunk before the trainable tail blocks
    identity = model_ops.backbone_identity(model, tail) + (masker.describe() if masker else "")
    path = cache_file(folder, cache_key(identity, pairs, views))
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
