"""Querybank normalisation at search time: every indexed image's offset (``encoders.query_bank``), and a
text→image top-k under ``q·g − offset(g)`` that stays exact over an index searched by the plain inner product.

The offsets are computed when the engine first opens the index under a bank, from the index's stored embeddings
(one pass, in chunks), and kept in the index folder (``query_bank_offsets.npz``, keyed by the bank's digest and the
shards' signature, so a rebuilt bank or an ``--append`` recomputes them; a read-only index folder just recomputes).
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

from engine.query.search import Neighbours, top_k

_CHUNK = 65536
FIRST_DEPTH_FACTOR = 4  # first search depth: this many times k (then ×4 per retry)
FIRST_DEPTH_MIN = 64


class BankOffsets:
    """Offsets of every image of one index under one model's query bank."""

    def __init__(self, ids: np.ndarray, values: np.ndarray, bank_description: dict) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids, self.values = ids[order].astype(np.int64), values[order].astype(np.float32)
        self.lowest = float(self.values.min()) if len(self.values) else 0.0
        self.description = bank_description

    @classmethod
    def compute(cls, store, bank, ids: np.ndarray) -> "BankOffsets":
        """Offsets of the images ``ids`` from their stored embeddings (``store.embeddings_for``)."""
        found_ids, values = [], []
        for start in range(0, len(ids), _CHUNK):
            found, matrix = store.embeddings_for(ids[start:start + _CHUNK])
            found_ids.append(found)
            values.append(bank.image_offsets(matrix) if len(found) else np.zeros(0, np.float32))
        return cls(np.concatenate(found_ids) if found_ids else np.zeros(0, np.int64),
                   np.concatenate(values) if values else np.zeros(0, np.float32), bank.describe())

    @classmethod
    def load_or_compute(cls, index_dir: Path, store, bank) -> "BankOffsets":
        """The offsets kept in ``index_dir`` when they are of this bank and these shards, else computed (and kept
        when the folder is writable)."""
        from engine.atomic import AtomicWriteError, replace_atomically
        from indexing.layout import BANK_OFFSETS_FILE
        from indexing.row_store import shard_signature

        path = Path(index_dir) / BANK_OFFSETS_FILE
        key = json.dumps([bank.digest(), shard_signature(Path(index_dir))])
        try:
            with np.load(path, allow_pickle=False) as kept:
                if str(kept["key"]) == key:
                    return cls(kept["ids"], kept["values"], bank.describe())
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # absent, stale format or damaged: recompute
        offsets = cls.compute(store, bank, store.image_ids())

        def write(temp: Path) -> None:
            with open(temp, "wb") as handle:
                np.savez(handle, key=np.array(key), ids=offsets.ids, values=offsets.values)

        try:
            replace_atomically(path, write, durable=False)
        except AtomicWriteError:
            pass  # a read-only index folder: the offsets live in memory only
        return offsets

    def of(self, ids: np.ndarray) -> np.ndarray:
        slots = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        if len(ids) and not np.array_equal(self.ids[slots], ids):
            raise KeyError("an image id without a query-bank offset (the index changed under the engine)")
        return self.values[slots]


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
