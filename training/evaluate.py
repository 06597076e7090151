"""Validation during training: Recall@K / mR of the current model on the val split (never the test split)."""

from __future__ import annotations

from collections.abc import Sequence

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
    images, texts = embed_cached(model, features, len(pairs.image_ids), len(pairs.texts), batch_size, device, tail)
    return _recalls(images, texts, pairs, ks)


@torch.no_grad()
def embed_cached(model, features: SplitFeatures, image_count: int, text_rows: int | Sequence[int], batch_size: int,
                 device: torch.device, tail: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(image embeddings, text embeddings) from cached backbone outputs (identity view), in eval mode, float32 on
    the CPU: the first ``image_count`` images; the first ``text_rows`` texts, or those rows when it is a list."""
    was_training = model.training
    model.eval()
    try:
        image_rows = []
        for start in range(0, image_count, batch_size):
            chunk = {k: v[start:start + batch_size, FIRST_VIEW].to(device) for k, v in features.images.items()}
            image_rows.append(model_ops.embed_images(model, chunk, tail).float().cpu())
        text_out = []
        count = text_rows if isinstance(text_rows, int) else len(text_rows)
        for start in range(0, count, batch_size):
            wanted = (slice(start, start + batch_size) if isinstance(text_rows, int)
                      else list(text_rows[start:start + batch_size]))
            chunk = {k: v[wanted].to(device) for k, v in features.texts.items()}
            text_out.append(model_ops.embed_texts(model, chunk, tail).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(image_rows), torch.cat(text_out)


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
