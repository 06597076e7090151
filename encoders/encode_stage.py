"""The encode stage of ``engine eval``, zero-shot evaluation and training's validation: reader → mapper → writer.

- reader: :class:`ImageFiles` decodes image files (``engine.data.images.load_rgb``) and applies the model's eval
  transform; a DataLoader batches them in input order;
- mapper: the model's own ``encode_image`` / ``encode_text`` (eager float32: these numbers are the ones reported);
  captions go through ``engine.text_encoding.encode_distinct`` (each distinct string encoded once);
- writer: one float32 array, row i = input i.

``engine index`` shares the model calls and ``encode_distinct`` but keeps its own reader (background masks,
skipped-image records) and mapper (checked compiled runtimes) in ``indexing/encode.py``; see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from engine.text_encoding import encode_distinct

Progress = Callable[[int], None] | None  # called with the number of items just encoded


class ImageFiles(Dataset):
    """Map-style dataset over image paths, applying ``transform`` (picklable for DataLoader workers)."""

    def __init__(self, paths: Sequence, transform) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from engine.data.images import load_rgb

        return self.transform(load_rgb(self.paths[index]))


def encode_image_files(model, paths: Sequence, batch_size: int, workers: int, device: torch.device,
                       on_batch: Progress = None) -> np.ndarray:
    """(len(paths), dim) float32 L2-normalised embeddings (the model's eval transform and test-time views)."""
    # A private generator: a DataLoader otherwise draws its base seed from torch's global RNG, which would shift
    # a training run's random stream every time it validates (tests/test_training_run.py catches that).
    loader = DataLoader(ImageFiles(paths, model.image_transform(train=False)), batch_size=batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda", generator=torch.Generator())
    chunks = []
    with torch.no_grad():
        for pixels in loader:
            chunks.append(model.encode_image(pixels.to(device)).float().cpu().numpy())
            if on_batch is not None:
                on_batch(len(pixels))
    return np.concatenate(chunks).astype(np.float32, copy=False)


def encode_captions(model, texts: list[str], batch_size: int, on_batch: Progress = None) -> np.ndarray:
    """(len(texts), dim) float32 embeddings; identical strings share one encoding."""
    def encode(batch: list[str]) -> np.ndarray:
        if on_batch is not None:
            on_batch(len(batch))
        return model.encode_text(batch).float().cpu().numpy()

    with torch.no_grad():
        return encode_distinct(encode, texts, batch_size)
