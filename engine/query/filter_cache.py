"""Results of ``--where`` filters kept for the next request with the same condition (the warm server's LRU).

Why: a served index is fixed while it is served (``engine index --append`` writes a new index state that a
restarted server reads), and real traffic repeats a few conditions (``split = 'test'``, one class) far more often
than it invents new ones; checking and running a condition in DuckDB costs a filtered request more CPU than its
k-NN search (measured: docs/benchmarks.md, load soak). Only successful results are kept, as read-only arrays
shared by every request. Bounds: ``max_entries`` conditions and ``max_ids`` ids in all (int64: 8 bytes each);
a result larger than a quarter of ``max_ids`` is not kept, so one broad condition cannot evict all the others.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

DEFAULT_MAX_ENTRIES = 256
DEFAULT_MAX_IDS = 4_000_000  # 32 MB of int64 ids


class FilterCache:
    """Thread-safe LRU: condition text -> sorted int64 ids (read-only)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_ids: int = DEFAULT_MAX_IDS) -> None:
        self.max_entries, self.max_ids = max_entries, max_ids
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._ids = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, where: str) -> np.ndarray | None:
        with self._lock:
            ids = self._entries.get(where)
            if ids is None:
                self.misses += 1
                return None
            self._entries.move_to_end(where)
            self.hits += 1
            return ids

    def put(self, where: str, ids: np.ndarray) -> np.ndarray:
        """Keep ``ids`` (when small enough) and return them read-only."""
        ids = np.asarray(ids, dtype=np.int64)
        ids.setflags(write=False)
        if self.max_entries <= 0 or len(ids) > self.max_ids // 4:
            return ids
        with self._lock:
            previous = self._entries.pop(where, None)
            if previous is not None:
                self._ids -= len(previous)
            self._entries[where] = ids
            self._ids += len(ids)
            while len(self._entries) > self.max_entries or self._ids > self.max_ids:
                _, evicted = self._entries.popitem(last=False)
                self._ids -= len(evicted)
        return ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
