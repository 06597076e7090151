"""Querybank normalisation at search time: every indexed image's offset (``encoders.query_bank``), and a
text→image top-k under ``q·g − offset(g)`` that stays exact over an index searched by the plain inner product.

The offsets are computed when the engine first opens the index under a bank, from the index's stored embeddings
(one pass, in chunks), and kept in the index folder (``query_bank_offsets.npz``, keyed by the bank's digest and the
shards' signature, so a rebuilt bank or an ``--append`` recomputes them; a read-only index folder just recomputes).
The captions' image→text offsets are computed with the caption matrix (the first ``--target captions`` query) and
kept the same way (``query_bank_caption_offsets.npz``).
The index is searched by the plain inner product, deeper than k: no image outside the first ``depth`` can beat
``s_depth − min offset`` (``s_depth``: the depth-th inner product), so once the k-th normalised score among the
candidates is above that bound the answer is the exact one; otherwise the depth grows and the search repeats.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from engine.errors import ConfigError
from engine.query.search import Neighbours, top_k

_CHUNK = 65536
FIRST_DEPTH_FACTOR = 4  # first search depth: this many times k (then ×4 per retry)
FIRST_DEPTH_MIN = 64


class BankOffsets:
    """Offsets of every image of one index under one model's query bank."""

    def __init__(self, ids: np.ndarray, values: np.ndarray) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids, self.values = ids[order].astype(np.int64), values[order].astype(np.float32)
        self.lowest = float(self.values.min()) if len(self.values) else 0.0

    @classmethod
    def compute(cls, store, bank, ids: np.ndarray) -> "BankOffsets":
        """Offsets of the images ``ids`` from their stored embeddings (``store.embeddings_for``)."""
        found_ids, values = [], []
        for start in range(0, len(ids), _CHUNK):
            found, matrix = store.embeddings_for(ids[start:start + _CHUNK])
            found_ids.append(found)
            values.append(bank.image_offsets(matrix) if len(found) else np.zeros(0, np.float32))
        return cls(np.concatenate(found_ids) if found_ids else np.zeros(0, np.int64),
                   np.concatenate(values) if values else np.zeros(0, np.float32))

    @classmethod
    def load_or_compute(cls, index_dir: Path, store, bank) -> "BankOffsets":
        """The offsets kept in ``index_dir`` when they are of this bank and these shards, else computed (and kept
        when the folder is writable)."""
        from indexing.layout import BANK_OFFSETS_FILE
        from indexing.row_store import shard_signature

        def compute() -> dict[str, np.ndarray]:
            offsets = cls.compute(store, bank, store.image_ids())
            return {"ids": offsets.ids, "values": offsets.values}

        key = json.dumps([bank.digest(), shard_signature(Path(index_dir))])
        kept = kept_arrays(Path(index_dir) / BANK_OFFSETS_FILE, key, compute)
        return cls(kept["ids"], kept["values"])

    def of(self, ids: np.ndarray) -> np.ndarray:
        slots = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        if len(ids) and not np.array_equal(self.ids[slots], ids):
            missing = int(ids[~np.isin(ids, self.ids)][0])
            raise ConfigError(f"image id {missing} is in faiss.index but has no stored embedding to normalise; "
                              "rebuild the index")
        return self.values[slots]


def caption_offsets(index_dir: Path, bank, caption_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Every indexed caption's image→text offset (``matrix``: their embeddings, in ``caption_ids`` order), kept in
    the index folder like the images' (``query_bank_caption_offsets.npz``)."""
    from indexing.layout import BANK_CAPTION_OFFSETS_FILE
    from indexing.row_store import shard_signature

    key = json.dumps([bank.digest(), shard_signature(Path(index_dir)), int(len(caption_ids))])
    kept = kept_arrays(Path(index_dir) / BANK_CAPTION_OFFSETS_FILE, key,
                       lambda: {"ids": caption_ids, "values": bank.text_offsets(matrix)})
    if not np.array_equal(kept["ids"], caption_ids):  # the same count of other captions: recompute, keep in memory
        return bank.text_offsets(matrix)
    return kept["values"]


def kept_arrays(path: Path, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays kept at ``path`` under ``key``, or ``compute()``'s, then kept there (atomically; a read-only
    folder keeps nothing, and a missing, damaged or stale file is recomputed)."""
    from engine.atomic import AtomicWriteError, replace_atomically

    try:
        with np.load(path, allow_pickle=False) as kept:
            if str(kept["key"]) == key:
                return {name: kept[name] for name in kept.files if name != "key"}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    arrays = compute()

    def write(temp: Path) -> None:
        with open(temp, "wb") as handle:
            np.savez(handle, key=np.array(key), **arrays)

    try:
        replace_atomically(path, write, durable=False)
    except AtomicWriteError:
        pass
    return arrays


def normalised_top_k(search: Callable[[int], Neighbours], k: int, available: int, offsets: BankOffsets
                     ) -> Neighbours:
    """The exact top-``k`` by ``q·g − offset(g)`` among ``available`` images, from ``search(depth)`` (the best
    ``depth`` by plain inner product, best first)."""
    depth = min(available, max(FIRST_DEPTH_FACTOR * k, FIRST_DEPTH_MIN))
    while True:
        found = search(depth)
        best = top_k(found.ids, found.scores - offsets.of(found.ids), k, found.method)
        if depth >= available or len(found.ids) < depth:  # every searchable image was a candidate
            return best
        bound = float(found.scores[-1]) - offsets.lowest  # what an image outside the candidates can reach at most
        if len(best.ids) == k and float(best.scores[-1]) > bound:
            return best
        depth = min(available, depth * FIRST_DEPTH_FACTOR)
