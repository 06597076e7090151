"""Encode one split of a dataset with a model: the exact embeddings that ``engine eval`` scores.

torch is imported inside the functions so that importing ``engine.evaluation`` stays cheap for the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.data.model import Dataset
from engine.devices import resolve_device
from engine.errors import DataError
from engine.text_encoding import encode_distinct

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class SplitEmbeddings:
    """Embeddings of a split, aligned: ``text_to_image[j]`` is the row in ``images`` of caption j's image."""

    image_ids: np.ndarray  # (num_images,) int64 dataset image ids
    images: np.ndarray  # (num_images, dim) float32, L2-normalised
    caption_ids: np.ndarray  # (num_texts,) int64
    texts: np.ndarray  # (num_texts, dim) float32, L2-normalised
    text_to_image: np.ndarray  # (num_texts,) int64 row positions into ``images``


class _ImageFiles:
    """Map-style dataset over image records, applying the model's eval transform (picklable for workers)."""

    def __init__(self, paths: list, transform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> "torch.Tensor":
        from engine.data.images import load_rgb

        return self.transform(load_rgb(self.paths[index]))


def embed_split(
    model, dataset: Dataset, batch_size: int = 64, workers: int = 0, device: str = "auto", show_progress: bool = True
) -> SplitEmbeddings:
    """Encode every image and caption of ``dataset`` (already restricted to one split)."""
    import torch

    if not dataset.images:
        raise DataError(f"{dataset.name}: the split has no images to evaluate")
    if not dataset.captions:
        raise DataError(f"{dataset.name}: the split has no captions; image-text evaluation needs captions")
    target = resolve_device(device)
    model = model.to(target).eval()
    progress = _progress(show_progress)
    with torch.inference_mode(), progress:
        images = _encode_images(model, [image.path for image in dataset.images], batch_size, workers, target, progress)
        texts = [caption.text for caption in dataset.captions]
        task = progress.add_task("captions", total=len(set(texts)))

        def encode(batch: list[str]) -> np.ndarray:
            progress.advance(task, len(batch))
            return model.encode_text(batch).float().cpu().numpy()

        text_embeddings = encode_distinct(encode, texts, batch_size * 4)
    row_of = {image.image_id: row for row, image in enumerate(dataset.images)}
    return SplitEmbeddings(
        image_ids=np.array([image.image_id for image in dataset.images], dtype=np.int64),
        images=images,
        caption_ids=np.array([caption.caption_id for caption in dataset.captions], dtype=np.int64),
        texts=text_embeddings.astype(np.float32, copy=False),
        text_to_image=np.array([row_of[caption.image_id] for caption in dataset.captions], dtype=np.int64),
    )


def embed_images(model, paths: list, batch_size: int = 64, workers: int = 0, device: str = "auto",
                 show_progress: bool = True) -> np.ndarray:
    """(len(paths), dim) float32 L2-normalised image embeddings, with the model's eval transform and views."""
    import torch

    target = resolve_device(device)
    model = model.to(target).eval()
    progress = _progress(show_progress)
    with torch.inference_mode(), progress:
        return _encode_images(model, paths, batch_size, workers, target, progress)


def _encode_images(model, paths: list, batch_size: int, workers: int, target, progress) -> np.ndarray:
    from torch.utils.data import DataLoader

    loader = DataLoader(_ImageFiles(list(paths), model.image_transform(train=False)), batch_size=batch_size,
                        num_workers=workers, pin_memory=target.type == "cuda")
    task = progress.add_task("images", total=len(paths))
    chunks = []
    for pixels in loader:
        chunks.append(model.encode_image(pixels.to(target)).float().cpu().numpy())
        progress.advance(task, len(pixels))
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )
