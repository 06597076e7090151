"""Validation during training: Recall@K / mR of the current model on the val split (never the test split)."""

from __future__ import annotations

import numpy as np
import torch

from encoders.encode_stage import encode_captions, encode_image_files
from engine.metrics import retrieval_recalls
from training import model_ops
from training.feature_cache import SplitFeatures
from training.pairs import PairSet

FIRST_VIEW = 0


@torch.no_grad()
def evaluate_cached(model, pairs: PairSet, features: SplitFeatures, batch_size: int, device: torch.device,
                    ks: tuple[int, ...], tail: int = 0) -> dict[str, float]:
    """Recalls from cached backbone outputs (identity view), running only the heads (and trainable tails)."""
    was_training = model.training
    model.eval()
    try:
        image_rows = []
        for start in range(0, len(pairs.image_ids), batch_size):
            chunk = {k: v[start:start + batch_size, FIRST_VIEW].to(device) for k, v in features.images.items()}
            image_rows.append(model_ops.embed_images(model, chunk, tail).float().cpu())
        text_rows = []
        for start in range(0, len(pairs.texts), batch_size):
            chunk = {k: v[start:start + batch_size].to(device) for k, v in features.texts.items()}
            text_rows.append(model_ops.embed_texts(model, chunk, tail).float().cpu())
    finally:
        model.train(was_training)
    return _recalls(torch.cat(image_rows), torch.cat(text_rows), pairs, ks)


@torch.no_grad()
def evaluate_files(model, pairs: PairSet, batch_size: int, device: torch.device,
                   ks: tuple[int, ...]) -> dict[str, float]:
    """Recalls computed end to end from image files and caption strings (backbones run), through the encode stage
    ``engine eval`` uses (``encoders.encode_stage``; no DataLoader workers)."""
    was_training = model.training
    model.eval()
    try:
        images = encode_image_files(model, pairs.image_paths, batch_size, 0, device)
        texts = encode_captions(model, pairs.texts, batch_size)
    finally:
        model.train(was_training)
    return _recalls(torch.from_numpy(images), torch.from_numpy(texts), pairs, ks)


def _recalls(images: torch.Tensor, texts: torch.Tensor, pairs: PairSet, ks: tuple[int, ...]) -> dict[str, float]:
    return retrieval_recalls(images.numpy(), texts.numpy(), np.asarray(pairs.text_to_image), ks=ks)
