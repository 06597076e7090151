"""Cache of frozen-backbone outputs, so that epochs on a CPU only run the trainable heads (VIR, LCA, projections).

Why: with frozen backbones, the backbone forward pass is the same every epoch and dominates CPU time
(docs/benchmarks.md, "Measurements behind design choices"). We run it once per image *view* (identity, horizontal flip,
vertical flip, 90° rotation: the dihedral symmetries that leave an overhead scene a valid scene) and once per
caption, store the tensors in a safetensors file keyed by model fingerprint + data, and sample one view per
training pair each epoch. Values are stored in float16 to halve memory; the heads upcast them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from encoders.views import apply_view
from training.pairs import PairSet
from engine.atomic import replace_atomically

CACHE_DTYPE = torch.float16


@dataclass
class SplitFeatures:
    """Cached inputs of the trainable part: image tensors (N_images, views, ...) and text tensors (N_texts, ...)."""

    images: dict[str, torch.Tensor]
    texts: dict[str, torch.Tensor]

    @property
    def num_views(self) -> int:
        return next(iter(self.images.values())).shape[1]


CACHE_FILE_PATTERN = "features-*.safetensors"  # one file per (backbones, data, views[, masks]) in a cache folder


def cache_file(folder: Path, key: str) -> Path:
    return folder / CACHE_FILE_PATTERN.replace("*", key)


def cache_key(model_fingerprint: str, pairs: PairSet, views: int) -> str:
    digest = hashlib.sha256()
    digest.update(model_fingerprint.encode())
    digest.update(json.dumps([pairs.image_paths, pairs.texts, views]).encode())
    return digest.hexdigest()[:16]


def tensor_ids(modules: list[torch.nn.Module]) -> set[int]:
    """Identities of the modules' parameters and buffers, to pick their entries out of ``state_dict(keep_vars=True)``."""
    return {id(tensor) for module in modules for tensor in (*module.parameters(), *module.buffers())}


def hash_state(digest, module: torch.nn.Module, skipped: set[int]) -> None:
    """Feed ``digest`` every state entry of ``module`` except ``skipped`` ones: name, then raw bytes, in name order.

    Cache keys hash the weights the cached tensors depend on; the trained tails are skipped."""
    for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
        if id(tensor) in skipped:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _stack_chunks(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}


def _to_cache_dtype(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(CACHE_DTYPE) if v.is_floating_point() else v for k, v in tensors.items()}


def compute_features(pairs: PairSet, views: int, image_batches: Callable[[], object],
                     image_inputs: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                     text_inputs: Callable[[list[str]], dict[str, torch.Tensor]], batch_size: int,
                     on_progress: Callable[[int], None] | None = None) -> SplitFeatures:
    """Run the frozen backbones over every image view and caption of ``pairs`` (no gradient)."""
    image_chunks: list[dict[str, torch.Tensor]] = []
    with torch.no_grad():
        for pixels in image_batches():
            per_view = [_to_cache_dtype(image_inputs(apply_view(pixels, view))) for view in range(views)]
            image_chunks.append({key: torch.stack([v[key].cpu() for v in per_view], dim=1) for key in per_view[0]})
            if on_progress:
                on_progress(pixels.shape[0])
        text_chunks = [
            {k: v.cpu() for k, v in _to_cache_dtype(text_inputs(pairs.texts[start:start + batch_size])).items()}
            for start in range(0, len(pairs.texts), batch_size)
        ]
    return SplitFeatures(_stack_chunks(image_chunks), _pad_and_stack(text_chunks))


def _pad_and_stack(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Text chunks may have different sequence lengths; pad dim 1 with zeros (masks pad with 0 = ignored)."""
    stacked = {}
    for key in chunks[0]:
        parts = [chunk[key] for chunk in chunks]
        if parts[0].dim() >= 2:
            longest = max(part.shape[1] for part in parts)
            parts = [torch.nn.functional.pad(part, [0, 0] * (part.dim() - 2) + [0, longest - part.shape[1]])
                     for part in parts]
        stacked[key] = torch.cat(parts)
    return stacked


def save_features(features: SplitFeatures, path: Path) -> None:
    tensors = {f"image.{k}": v.contiguous() for k, v in features.images.items()}
    tensors.update({f"text.{k}": v.contiguous() for k, v in features.texts.items()})
    replace_atomically(path, lambda temp: save_file(tensors, str(temp)))


def load_features(path: Path) -> SplitFeatures:
    tensors = load_file(str(path))
    images = {k.removeprefix("image."): v for k, v in tensors.items() if k.startswith("image.")}
    texts = {k.removeprefix("text."): v for k, v in tensors.items() if k.startswith("text.")}
    return SplitFeatures(images, texts)


class CachedPairs(torch.utils.data.Dataset):
    """Training pairs served from cached features; the view of each pair is drawn from (seed, epoch, index).

    Deriving the view from the sample index instead of a global RNG keeps the draw independent of worker
    count, rank layout and resume point, so a resumed or DDP run sees exactly the same inputs.
    """

    def __init__(self, pairs: PairSet, features: SplitFeatures, seed: int, augment: bool) -> None:
        self.pairs = pairs
        self.features = features
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs.pairs)

    def view_of(self, index: int) -> int:
        if not self.augment or self.features.num_views == 1:
            return 0
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
        return int(torch.randint(self.features.num_views, (1,), generator=generator))

    def __getitem__(self, index: int):
        pair = self.pairs.pairs[index]
        view = self.view_of(index)
        image = {k: v[pair.image_row, view] for k, v in self.features.images.items()}
        text = {k: v[pair.caption_row] for k, v in self.features.texts.items()}
        return image, text, pair.image_id, pair.class_id, pair.caption_group


def collate_cached(items):
    images, texts, image_ids, class_ids, groups = zip(*items)
    return {"image_inputs": {k: torch.stack([i[k] for i in images]) for k in images[0]},
            "text_inputs": {k: torch.stack([t[k] for t in texts]) for k in texts[0]},
            "image_ids": torch.tensor(image_ids, dtype=torch.long),
            "class_ids": torch.tensor(class_ids, dtype=torch.long),
            "caption_groups": torch.tensor(groups, dtype=torch.long)}
