"""A loaded ``Mix`` → the training loader of a mixed run (one ``PairSet`` and one feature cache per dataset).

Why per dataset: each dataset keeps its own cache file under the same key a single-dataset run uses (so the
UCM trunk cache of earlier runs serves a mixed run too), and its own number of cached views. The pairs of the
datasets are told apart by offsetting image ids and caption groups, so that image 0 of UCM and image 0 of AID
are different images for the contrastive loss; class ids are global (``Mix.class_names``), so the affiliation
loss builds its class centres from every labelled dataset in the batch.

Scene collections are stored compactly: their generated captions repeat (a class has a few dozen), so their
``PairSet`` holds each distinct caption once, and all captions of one class form one caption group: with
``--same-caption-positives`` two images of the same scene class, captioned from the same label, are positives
for each other rather than negatives. With ``--unfreeze-last N`` (EfficientNet trunk, instruction sharing the
vision pass) a scene collection's trunk maps are the very file ``engine train-instruction --unfreeze-last N
--feature-cache`` writes for the same images and views: a link to that file in the cache folder saves
re-encoding the collection.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader

from engine.errors import ConfigError
from training import distributed, model_ops
from training.train_config import TrainConfig
from training.distributed import DistInfo
from training.loaders import TrainingData, ValSet, cached_split_features
from training.feature_cache import (CachedPairs, SplitFeatures, cache_key, collate_cached,
                                    load_features, save_features)
from training.mix import SCENES, Mix, MixSource, relabelled_split
from training.mix_sampler import MixSampler, default_epoch_size
from training.pairs import (ImagePairs, Pair, PairSet, build_pairs, caption_key, check_batch_size,
                            collate_image_pairs, without_repeated_captions)
from training.seeding import seed_dataloader_worker

TRAIN_SPLIT = "train"


def source_pairs(source: MixSource, class_names: list[str]) -> PairSet:
    """The training pairs of one dataset of a mix, with global class ids (ids not yet offset)."""
    if source.kind != SCENES:
        return build_pairs(source.train, TRAIN_SPLIT, class_names=class_names)
    class_index = {name: index for index, name in enumerate(class_names)}
    by_image = source.train.captions_by_image()
    text_row: dict[str, int] = {}
    texts: list[str] = []
    owners: list[int] = []
    image_ids, paths, pairs = [], [], []
    for row, image in enumerate(source.train.images):
        image_ids.append(image.image_id)
        paths.append(str(image.path))
        class_id = class_index[image.label]
        for caption in by_image.get(image.image_id, []):
            key = caption_key(caption.text)
            if key not in text_row:
                text_row[key] = len(texts)
                texts.append(caption.text)
                owners.append(row)  # the first image with this caption: a training-only pair set
            pairs.append(Pair(image.image_id, row, text_row[key], class_id, class_id))
    return PairSet(pairs, image_ids, paths, texts, owners, list(class_names))


def offset_pairs(sets: list[PairSet]) -> list[PairSet]:
    """Make image ids and caption groups unique across the datasets (the loss compares them)."""
    shifted, id_offset, group_offset = [], 0, 0
    for pairs in sets:
        moved = [dataclasses.replace(p, image_id=p.image_id + id_offset, caption_group=p.caption_group + group_offset)
                 for p in pairs.pairs]
        shifted.append(dataclasses.replace(pairs, pairs=moved, image_ids=[i + id_offset for i in pairs.image_ids]))
        id_offset += max(pairs.image_ids) + 1
        group_offset += max(p.caption_group for p in pairs.pairs) + 1
    return shifted


def collate_mixed_cached(items):
    """``collate_cached`` for pairs from several caches: text tensors are zero-padded to the longest in the batch
    (masks pad with 0, so padding stays ignored)."""
    longest = max(text["mask"].shape[0] for _, text, *_ in items)
    padded = []
    for image, text, *rest in items:
        grown = {}
        for key, value in text.items():
            missing = longest - value.shape[0]
            grown[key] = torch.nn.functional.pad(value, [0, 0] * (value.dim() - 1) + [0, missing]) if missing else value
        padded.append((image, grown, *rest))
    return collate_cached(padded)


def prepare_mixed_data(mix: Mix, config: TrainConfig, model, device: torch.device, info: DistInfo):
    class_names = mix.class_names
    pair_sets = [source_pairs(source, class_names) for source in mix.sources]
    if config.repeated_captions == "once":
        pair_sets = [without_repeated_captions(pairs) for pairs in pair_sets]
    pair_sets = offset_pairs(pair_sets)
    val_sets = [ValSet(source.name, build_pairs(relabelled_split(source, "val", class_names), "val",
                                                class_names=class_names))
                for source in mix.val_sources]
    sizes = [len(pairs.pairs) for pairs in pair_sets]
    weights = [source.entry.weight for source in mix.sources]
    epoch_size = mix.spec.epoch_pairs or default_epoch_size(sizes, weights, mix.primary)
    check_batch_size(config.batch_size, epoch_size, info.world_size)
    if config.feature_cache:
        folder = Path(config.feature_cache)
        parts = []
        for source, pairs in zip(mix.sources, pair_sets):
            views = source.views or config.cached_views
            if source.kind == SCENES:
                features = _scene_features(folder, model, source, pairs, views, config, device, info)
            else:
                features = cached_split_features(folder, model, pairs, views, config, device, info)
            parts.append(CachedPairs(pairs, features, config.seed, augment=config.augment))
        for val in val_sets:
            val.features = cached_split_features(folder, model, val.pairs, 1, config, device, info)
        collate = collate_mixed_cached
    else:
        transform = model.image_transform(train=config.augment)
        parts = [ImagePairs(pairs, transform) for pairs in pair_sets]
        collate = collate_image_pairs
    train_dataset = ConcatDataset(parts)
    sampler = MixSampler(sizes, weights, epoch_size, config.seed, num_replicas=info.world_size, rank=info.rank)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_dataset, batch_size=config.batch_size // info.world_size, sampler=sampler,
                        drop_last=True, num_workers=config.num_workers, collate_fn=collate,
                        worker_init_fn=seed_dataloader_worker, generator=generator,
                        persistent_workers=False, pin_memory=device.type == "cuda")
    return TrainingData(pair_sets[mix.primary], val_sets, loader, sampler, bool(config.feature_cache),
                        train_dataset)


def _scene_features(folder: Path, model, source: MixSource, pairs: PairSet, views: int, config: TrainConfig,
                    device: torch.device, info: DistInfo) -> SplitFeatures:
    """Trunk maps (shared with ``engine train-instruction``'s cache) + the distinct captions' text inputs."""
    tail = config.unfreeze_last
    if not tail or model_ops.owns_instruction_backbone(model):
        return cached_split_features(folder, model, pairs, views, config, device, info)
    from encoders.split import is_efficientnet_style
    from training.instruction_tail import cached_trunks

    if not is_efficientnet_style(model.vision.model):
        raise ConfigError("--unfreeze-last with a scene collection in the mix needs an EfficientNet-style vision "
                          "backbone (its trunk maps are cached)")
    network = model.vision.model
    transform = model.image_transform(train=False)
    was_training = model.training
    model.eval()
    cached = source.split_train_positions or source.train_positions  # what train-instruction cached
    try:
        if info.is_main:
            trunks = cached_trunks(network, source.dataset, cached, views, tail, transform,
                                   config.eval_batch_size, folder, show_progress=False)
        distributed.barrier()
        if not info.is_main:
            trunks = cached_trunks(network, source.dataset, cached, views, tail, transform,
                                   config.eval_batch_size, folder)
        texts = _text_features(folder, model, pairs, config, device, info)
    finally:
        model.train(was_training)
    if cached != source.train_positions:  # near-duplicates of evaluation images were left out: their rows too
        row = {position: index for index, position in enumerate(cached)}
        trunks = trunks[torch.tensor([row[position] for position in source.train_positions])]
    if trunks.shape[0] != len(pairs.image_ids):
        raise ConfigError(f"{folder}: trunk maps for {trunks.shape[0]} images, the pairs have {len(pairs.image_ids)}")
    return SplitFeatures({"trunk": trunks}, texts)


def _text_features(folder: Path, model, pairs: PairSet, config: TrainConfig, device: torch.device,
                   info: DistInfo) -> dict[str, torch.Tensor]:
    """Text inputs of ``pairs.texts`` (the trunk before the trainable layers), cached by (backbones, texts)."""
    tail = config.unfreeze_last
    key = cache_key(model_ops.backbone_identity(model, tail), dataclasses.replace(pairs, image_paths=[]), 0)
    path = folder / f"texts-{key}.safetensors"
    if info.is_main and not path.is_file():
        from training.feature_cache import _pad_and_stack, _to_cache_dtype

        with torch.no_grad():
            chunks = [{k: v.cpu() for k, v in _to_cache_dtype(model_ops.text_inputs(
                model, pairs.texts[start:start + config.eval_batch_size], tail)).items()}
                for start in range(0, len(pairs.texts), config.eval_batch_size)]
        save_features(SplitFeatures({}, _pad_and_stack(chunks)), path)
    distributed.barrier()
    return load_features(path).texts
