"""`engine train-instruction --train-backbone`: fine-tune the whole instruction network on AID, end to end.

PIR's instruction encoder is a second network (ResNet-50) fully fine-tuned on AID and then frozen; its pooled
feature carries scene knowledge that the retrieval backbone's own global token does not. This trains every weight
of a config's *own* instruction backbone (``instruction.share_vision_backbone: false``; a shared backbone is the
vision side itself and is refused) from image files: each epoch sees every training image once under a seeded
random dihedral view, BatchNorm in training mode, AdamW with the classifier at ``learning_rate`` and the backbone
at ``learning_rate x backbone_lr_scale``, linear warm-up then decay, label smoothing. No feature cache can serve
this (the whole network changes), so it costs a forward and a backward pass of the backbone per image and epoch.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset as TorchDataset

from encoders.views import VIEW_NAMES, apply_view
from engine.data.model import Dataset
from engine.errors import ConfigError
from training.schedule import build_scheduler


class _SceneImages(TorchDataset):
    def __init__(self, dataset: Dataset, positions: list[int], labels: torch.Tensor, transform) -> None:
        self.dataset, self.positions, self.labels, self.transform = dataset, positions, labels, transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int):
        from engine.data.images import load_rgb

        return self.transform(load_rgb(self.dataset.images[self.positions[index]].path)), self.labels[index]


def fit_backbone(encoder, dataset: Dataset, train_positions: list[int], train_labels: torch.Tensor, transform,
                 settings, views: int, show_progress: bool = False) -> None:
    """Train ``encoder`` (backbone + classifier) end to end; leaves it frozen (eval mode, no gradients)."""
    if encoder.backbone is None:
        raise ConfigError("--train-backbone trains an instruction network of its own; this config's instruction "
                          "shares the vision backbone (instruction.share_vision_backbone: true)")
    encoder.unfreeze()
    encoder.train()
    groups = [{"params": encoder.classifier_parameters(), "lr": settings.learning_rate},
              {"params": encoder.backbone_parameters(), "lr": settings.learning_rate * settings.backbone_lr_scale}]
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    loader = DataLoader(_SceneImages(dataset, train_positions, train_labels, transform),
                        batch_size=settings.finetune_batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(settings.seed), num_workers=0)
    scheduler = build_scheduler(optimizer, max(1, len(loader)) * settings.epochs, warmup_fraction=0.1)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    usable_views = min(views, len(VIEW_NAMES))
    for epoch in range(settings.epochs):
        started, total, seen = time.perf_counter(), 0.0, 0
        for pixels, labels in loader:
            view = int(torch.randint(usable_views, (1,), generator=generator))
            logits = encoder.logits(apply_view(pixels, view))
            loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.detach().item() * len(labels)
            seen += len(labels)
            if show_progress and seen % (settings.finetune_batch_size * 20) == 0:
                print(f"  epoch {epoch + 1}: {seen}/{len(loader.dataset)} images, loss {total / seen:.4f}",
                      flush=True)
        if show_progress:
            print(f"  epoch {epoch + 1}/{settings.epochs}: loss {total / max(seen, 1):.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    encoder.freeze()


def predict_files(encoder, dataset: Dataset, positions: list[int], transform, batch_size: int) -> torch.Tensor:
    """Held-out class predictions of the (frozen) encoder from the image files."""
    from engine.data.images import load_rgb

    predictions = []
    with torch.no_grad():
        for start in range(0, len(positions), batch_size):
            pixels = torch.stack([transform(load_rgb(dataset.images[p].path))
                                  for p in positions[start:start + batch_size]])
            predictions.append(encoder.logits(pixels).argmax(dim=1))
    return torch.cat(predictions)
