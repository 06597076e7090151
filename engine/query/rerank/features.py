"""Per-image attention features for reranking, and their cache in the index folder.

For every image the rerankers need, at the chosen vision self-attention layer: per-head Q, K, V (h, N, d) for
AAS, and — for PAR — the last attention layer's map averaged over heads and placed in a fixed *position frame*
(P, P), with a mask of the positions that hold a token. The frame matters for VIR (EfficientNet backbones):
VIR keeps the r_k tokens the instruction believes in, in belief order, so token i of two images is usually a
different grid cell; ``token_indices`` puts each kept token back at its grid position (P = 1 + grid cells).
Backbone (ViT/Swin) layers already are in grid order (P = N).

Cache: ``INDEX_DIR/attention/layer<L>/part-*.npz`` (float16, ids inside) + ``meta.json`` (model fingerprint,
layer). Images missing from the cache are read, encoded in batches and appended as a new part, written to a
temp name and renamed, so a rerank never re-reads an image twice and a crash never leaves a half part.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.atomic import AtomicWriteError, replace_atomically
from indexing.layout import ATTENTION_DIR

META_FILE = "meta.json"
FEATURE_BATCH = 16
STORE_DTYPE = np.float16


@dataclass(frozen=True)
class AttentionFeatures:
    """Features of n images: Q/K/V (n, h, N, d), maps (n, P, P), kept (n, P) bool."""

    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    maps: np.ndarray
    kept: np.ndarray

    def __len__(self) -> int:
        return int(self.query.shape[0])

    def take(self, rows: list[int] | np.ndarray) -> "AttentionFeatures":
        return AttentionFeatures(self.query[rows], self.key[rows], self.value[rows], self.maps[rows],
                                 self.kept[rows])

    def as_float32(self) -> "AttentionFeatures":
        return AttentionFeatures(*(np.asarray(part, dtype=np.float32) for part in
                                   (self.query, self.key, self.value, self.maps)), self.kept)


def extract_features(model, pixels, layer: int) -> AttentionFeatures:
    """Run the model's attention introspection on a (B, 3, H, W) batch; caller holds the model lock."""
    import torch

    with torch.inference_mode():
        result = model.vision_attention(pixels.to(model.device), layer=layer)
    mean_map = result.last_attention.float().mean(dim=1).cpu().numpy()  # (B, N, N), averaged over heads
    batch, tokens = mean_map.shape[:2]
    if result.token_indices is None:
        positions = np.broadcast_to(np.arange(tokens), (batch, tokens))
        frame = tokens
    else:
        positions = result.token_indices.cpu().numpy()
        grid = int(model.config.vision.token_grid)
        frame = 1 + grid * grid
    maps = np.zeros((batch, frame, frame), np.float32)
    kept = np.zeros((batch, frame), bool)
    for row in range(batch):
        where = positions[row]
        maps[row][np.ix_(where, where)] = mean_map[row]
        kept[row, where] = True
    parts = [tensor.float().cpu().numpy().astype(STORE_DTYPE) for tensor in (result.query, result.key, result.value)]
    return AttentionFeatures(*parts, maps.astype(STORE_DTYPE), kept)


class AttentionCache:
    """Features by image id for one (model, layer), filled lazily from images and kept on disk and in memory."""

    def __init__(self, index_dir: Path, layer: int, fingerprint: str) -> None:
        self.folder = Path(index_dir) / ATTENTION_DIR / f"layer{layer}"
        self.layer = layer
        self.fingerprint = fingerprint
        self.lock = threading.Lock()
        self.rows: dict[int, tuple[np.ndarray, ...]] = {}
        self._open()

    def _open(self) -> None:
        meta_path = self.folder / META_FILE
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                meta = {}
            if meta.get("model_fingerprint") != self.fingerprint or meta.get("layer") != self.layer:
                shutil.rmtree(self.folder, ignore_errors=True)  # features of another model: useless, rebuild
        for part in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(part) as stored:
                    arrays = [stored[name] for name in ("ids", "query", "key", "value", "maps", "kept")]
            except (OSError, ValueError, KeyError):
                part.unlink(missing_ok=True)  # unreadable part: its images are simply encoded again
                continue
            for row, image_id in enumerate(arrays[0]):
                self.rows[int(image_id)] = tuple(array[row] for array in arrays[1:])

    def missing(self, ids: list[int]) -> list[int]:
        return [image_id for image_id in ids if image_id not in self.rows]

    def features(self, ids: list[int]) -> AttentionFeatures:
        """Stacked features of ``ids`` (all must be cached: call :meth:`fill` first)."""
        columns = list(zip(*(self.rows[image_id] for image_id in ids)))
        return AttentionFeatures(*(np.stack(column) for column in columns))

    def add(self, ids: list[int], features: AttentionFeatures) -> None:
        """Remember and persist freshly computed features (one new part file)."""
        if not ids:
            return
        with self.lock:
            for row, image_id in enumerate(ids):
                self.rows[image_id] = (features.query[row], features.key[row], features.value[row],
                                       features.maps[row], features.kept[row])
            self._write_part(ids, features)

    def _write_part(self, ids: list[int], features: AttentionFeatures) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            meta = self.folder / META_FILE
            if not meta.is_file():
                replace_atomically(meta, lambda temp: temp.write_text(json.dumps(
                    {"model_fingerprint": self.fingerprint, "layer": self.layer}), encoding="utf-8"), durable=False)
            name = f"part-{time.time_ns()}-{os.getpid()}.npz"
            replace_atomically(self.folder / name, lambda temp: _save(temp, ids, features), durable=False)
        except (OSError, AtomicWriteError):
            pass  # a read-only index folder still reranks; it only re-encodes next time


def _save(temp: Path, ids: list[int], features: AttentionFeatures) -> None:
    with open(temp, "wb") as handle:
        np.savez(handle, ids=np.asarray(ids, np.int64), query=features.query, key=features.key,
                 value=features.value, maps=features.maps, kept=features.kept)
