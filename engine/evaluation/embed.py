"""Encode one split of a dataset with a model: the exact embeddings that ``engine eval`` scores (through the shared
encode stage, ``encoders.encode_stage``).

torch is imported inside the functions so that importing ``engine.evaluation`` stays cheap for the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.data.model import Dataset
from engine.devices import resolve_device
from engine.errors import DataError


@dataclass(frozen=True)
class SplitEmbeddings:
    """Embeddings of a split, aligned: ``text_to_image[j]`` is the row in ``images`` of caption j's image."""

    image_ids: np.ndarray  # (num_images,) int64 dataset image ids
    images: np.ndarray  # (num_images, dim) float32, L2-normalised
    caption_ids: np.ndarray  # (num_texts,) int64
    texts: np.ndarray  # (num_texts, dim) float32, L2-normalised
    text_to_image: np.ndarray  # (num_texts,) int64 row positions into ``images``


def embed_split(
    model, dataset: Dataset, batch_size: int = 64, workers: int = 0, device: str = "auto", show_progress: bool = True
) -> SplitEmbeddings:
    """Encode every image and caption of ``dataset`` (already restricted to one split)."""
    import torch

    from encoders.encode_stage import encode_captions, encode_image_files

    if not dataset.images:
        raise DataError(f"{dataset.name}: the split has no images to evaluate")
    if not dataset.captions:
        raise DataError(f"{dataset.name}: the split has no captions; image-text evaluation needs captions")

    target = resolve_device(device)
    model = model.to(target).eval()
    progress = _progress(show_progress)
    with torch.inference_mode(), progress:
        image_task = progress.add_task("images", total=len(dataset.images))
        images = encode_image_files(model, [image.path for image in dataset.images], batch_size, workers, target,
                                    lambda count: progress.advance(image_task, count))
        texts = [caption.text for caption in dataset.captions]
        task = progress.add_task("captions", total=len(set(texts)))
        text_embeddings = encode_captions(model, texts, batch_size * 4, lambda count: progress.advance(task, count))
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

    from encoders.encode_stage import encode_image_files

    target = resolve_device(device)
    model = model.to(target).eval()
    progress = _progress(show_progress)
    with torch.inference_mode(), progress:
        task = progress.add_task("images", total=len(paths))
        return encode_image_files(model, paths, batch_size, workers, target, lambda count: progress.advance(task, count))


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
