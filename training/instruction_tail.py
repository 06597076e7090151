"""`engine train-instruction --unfreeze-last N`: train the last backbone stages together with the scene classifier.

Why: a linear classifier on frozen ImageNet EfficientNet-Lite0 features reaches ~91 % on AID, and with a shared
backbone (the offline default) those same ImageNet features are all the retrieval model's image side ever sees.
Training the last stage on AID's thousands of labelled aerial scenes adapts the shared features to overhead
imagery before retrieval training starts, which is what PIR's AID-fine-tuned ResNet-50 does for its instruction.

How, on a CPU: the part before the tail is run once per (image, view) and cached as float16 in a safetensors
file keyed by the trunk's weights, the image list, the views and the cut point, so every epoch runs only the tail
and the classifier. BatchNorm layers keep their ImageNet statistics (eval mode) as in retrieval training's
``--unfreeze-last``, so cached trunk maps, training and inference all see the same function.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from encoders.split import vision_tail_modules
from engine.atomic import replace_atomically
from engine.data.model import Dataset
from encoders.views import apply_view
from training.feature_cache import CACHE_DTYPE, hash_state, tensor_ids
from training.schedule import build_scheduler

TRUNK_KEY = "trunk"


def tail_parameters(network: nn.Module, tail: int) -> list[nn.Parameter]:
    return [p for module in vision_tail_modules(network, tail) for p in module.parameters()]


def tail_state(network: nn.Module, tail: int) -> dict[str, torch.Tensor]:
    """The network's state entries (weights and BatchNorm buffers) that belong to the tail, by their names."""
    owned = tensor_ids(vision_tail_modules(network, tail))
    return {name: tensor.detach().cpu().contiguous().clone()
            for name, tensor in network.state_dict(keep_vars=True).items() if id(tensor) in owned}


def trunk_cache_key(network: nn.Module, image_paths: list[str], views: int, tail: int) -> str:
    """Hash of what the cached trunk maps depend on: trunk weights, images, views and the cut point."""
    digest = hashlib.sha256(json.dumps([image_paths, views, tail]).encode())
    hash_state(digest, network, tensor_ids(vision_tail_modules(network, tail)))
    return digest.hexdigest()[:16]


def cached_trunks(network: nn.Module, dataset: Dataset, positions: list[int], views: int, tail: int, transform,
                  batch_size: int, folder: Path | None, show_progress: bool = False) -> torch.Tensor:
    """(len(positions), views, C, H, W) float16 trunk maps, read from ``folder`` when a matching file exists."""
    from encoders.split import network_trunk
    from engine.data.images import load_rgb

    paths = [str(dataset.images[p].path) for p in positions]
    path = None
    if folder is not None:
        path = folder / f"trunk-{trunk_cache_key(network, paths, views, tail)}.safetensors"
        if path.is_file():
            return load_file(str(path))[TRUNK_KEY]
    chunks = []
    network.eval()
    with torch.no_grad():
        for start in range(0, len(positions), batch_size):
            pixels = torch.stack([transform(load_rgb(p)) for p in paths[start:start + batch_size]])
            chunks.append(torch.stack([network_trunk(network, apply_view(pixels, v), tail).to(CACHE_DTYPE)
                                       for v in range(views)], dim=1))
            if show_progress:
                print(f"  trunk maps: {min(start + batch_size, len(paths))}/{len(paths)} images", flush=True)
    trunks = torch.cat(chunks)
    if path is not None:
        replace_atomically(path, lambda temp: save_file({TRUNK_KEY: trunks.contiguous()}, str(temp)))
    return trunks


def pooled_from_trunk(network: nn.Module, trunks: torch.Tensor, tail: int) -> torch.Tensor:
    """Trunk maps -> the pooled feature the full network gives (its ``forward`` with no classifier)."""
    from encoders.split import network_tail

    return network.forward_head(network_tail(network, trunks.float(), tail), pre_logits=True)


def fit_tail(network: nn.Module, classifier: nn.Linear, trunks: torch.Tensor, labels: torch.Tensor, tail: int,
             settings, show_progress: bool = False) -> None:
    """Classifier at ``learning_rate``, tail at ``learning_rate x backbone_lr_scale``, on (image, view) samples.

    ``settings`` is an ``InstructionTrainConfig``. The network stays in eval mode (fixed BatchNorm statistics)."""
    network.eval()
    network.requires_grad_(False)
    parameters = tail_parameters(network, tail)
    for parameter in parameters:
        parameter.requires_grad_(True)
    groups = [{"params": list(classifier.parameters()), "lr": settings.learning_rate},
              {"params": parameters, "lr": settings.learning_rate * settings.backbone_lr_scale}]
    fit_on_samples(lambda batch: classifier(pooled_from_trunk(network, batch, tail)), classifier, groups, trunks,
                   labels, settings, show_progress)
    network.requires_grad_(False)


def fit_on_samples(forward, classifier: nn.Linear, groups: list[dict], features: torch.Tensor, labels: torch.Tensor,
                   settings, show_progress: bool = False) -> None:
    """Mini-batch AdamW with linear warmup/decay and label smoothing over the (image, view) samples of
    ``features`` (N, views, ...), drawn in a seeded order; ``forward`` maps a batch of samples to logits."""
    samples = features.flatten(0, 1)
    sample_labels = labels.repeat_interleave(features.shape[1])
    classifier.requires_grad_(True)
    classifier.train()
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, -(-len(samples) // settings.batch_size))
    scheduler = build_scheduler(optimizer, steps_per_epoch * settings.epochs, warmup_fraction=0.1)
    generator = torch.Generator().manual_seed(settings.seed)
    for epoch in range(settings.epochs):
        order = torch.randperm(len(samples), generator=generator)
        total = 0.0
        for start in range(0, len(samples), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = F.cross_entropy(forward(samples[batch]), sample_labels[batch],
                                   label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach().item() * len(batch)
        if show_progress:
            print(f"  epoch {epoch + 1}/{settings.epochs}: loss {total / len(samples):.4f}", flush=True)
    classifier.requires_grad_(False)
    classifier.eval()


def predict(network: nn.Module, classifier: nn.Linear, trunks: torch.Tensor, tail: int,
            batch_size: int) -> torch.Tensor:
    """Class index per image, from view 0 of the cached trunk maps."""
    with torch.no_grad():
        return torch.cat([classifier(pooled_from_trunk(network, trunks[start:start + batch_size, 0], tail)).argmax(1)
                          for start in range(0, len(trunks), batch_size)])
