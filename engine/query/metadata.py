"""Per-thread SQL access to an index folder's catalog, with ``class`` accepted as an alias of ``label``.

DuckDB connections must not be shared between threads, so every thread gets its own ``cursor()`` of the
catalog's in-memory database (cursors see the same views and share its locked configuration). The catalog's
``query_images`` view adds the ``class`` column so that ``--where "class = 'airport'"`` and
``--where "label = 'airport'"`` both work; ``indexing.sql_filter`` checks every condition before it runs.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import EngineError
from engine.query.filter_cache import FilterCache

IMAGE_COLUMNS = "image_id, path, split, label, captions"


@dataclass(frozen=True)
class ImageRow:
    image_id: int
    path: str  # absolute when the data root is known, else as stored (relative to the data root)
    split: str | None
    label: str | None
    captions: list[str]


class MetadataStore:
    """Filters, metadata and stored embeddings of one index; safe to call from many threads."""

    def __init__(self, catalog, index_config) -> None:
        from indexing.row_store import RowStore

        self.catalog = catalog
        # by-id reads go to the memory-mapped row file when it can exist; the catalog answers SQL (and by-id
        # reads of a read-only index folder)
        self.rows = RowStore.open(Path(catalog.index_dir))
        self.connection = catalog.connection
        self.local = threading.local()
        self.data_root_of = _data_root_ranges(Path(catalog.index_dir), index_config)
        self.filter_budget_s: float | None = None  # None: indexing.filter_guard's default
        self.filter_cache = FilterCache()  # --where results of this (fixed) index, by condition text

    def cursor(self):
        cursor = getattr(self.local, "cursor", None)
        if cursor is None:
            cursor = self.local.cursor = self.connection.cursor()
        return cursor

    def filter_ids(self, where: str) -> np.ndarray:
        """Image ids matching a user SQL condition (checked by ``indexing.sql_filter``; one-line errors), on
        this thread's own cursor and within ``filter_budget_s`` seconds; a condition seen before is answered
        from ``filter_cache`` (read-only array)."""
        from indexing.filter_guard import DEFAULT_FILTER_BUDGET_S
        from indexing.sql_filter import run_filter

        cached = self.filter_cache.get(where)
        if cached is not None:
            return cached
        budget = DEFAULT_FILTER_BUDGET_S if self.filter_budget_s is None else self.filter_budget_s
        return self.filter_cache.put(where, run_filter(self.cursor(), where, self.catalog.filter_columns, budget))

    def place_ids(self, place, budget_s: float | None = None) -> np.ndarray:
        """Chip ids selected by a ``--bbox`` / ``--near`` filter (``engine.query.geo_filter.GeoFilter``), on this
        thread's own cursor and within ``budget_s`` seconds (None: ``filter_budget_s``, as ``filter_ids``)."""
        from engine.query.geo_filter import matching_ids
        from indexing.filter_guard import DEFAULT_FILTER_BUDGET_S

        if budget_s is None:
            budget_s = DEFAULT_FILTER_BUDGET_S if self.filter_budget_s is None else self.filter_budget_s
        return matching_ids(self, place, budget_s)

    def image_ids(self) -> np.ndarray:
        """Every image id of the index, ascending."""
        if self.rows is not None:
            return self.rows.sorted_ids.astype(np.int64)
        return np.asarray([row[0] for row in self.cursor().execute(
            "SELECT image_id FROM images ORDER BY image_id").fetchall()], np.int64)

    def embeddings_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stored (ids, (n, D) float32 embeddings) of the given image ids, in id order."""
        if len(ids) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        if self.rows is not None:
            return self.rows.embeddings(ids)
        table = self.cursor().sql(
            "SELECT image_id, embedding FROM images WHERE image_id IN (SELECT unnest($ids)) ORDER BY image_id",
            params={"ids": [int(value) for value in ids]}).to_arrow_table()
        found = table.column("image_id").to_numpy()
        vectors = table.column("embedding").combine_chunks()
        matrix = np.asarray(vectors.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        return found.astype(np.int64), matrix.reshape(len(found), -1)

    def rows_for(self, ids: list[int]) -> dict[int, ImageRow]:
        if not ids:
            return {}
        if self.rows is not None:
            table = self.rows.take(np.asarray(ids, np.int64), IMAGE_COLUMNS.split(", "))
            rows = zip(*(table.column(name).to_pylist() for name in table.column_names))
        else:
            rows = self.cursor().execute(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE image_id IN (SELECT unnest($ids))",
                {"ids": [int(value) for value in ids]}).fetchall()
        return {row[0]: ImageRow(row[0], self.absolute_path(row[0], row[1]), row[2], row[3], list(row[4] or []))
                for row in rows}

    def absolute_path(self, image_id: int, stored: str) -> str:
        for first, last, root in self.data_root_of:
            if first <= image_id <= last:
                return os.path.join(root, stored)  # str join: a Path per hit cost ~35 µs, 10 per query
        return stored

    def caption_matrix(self) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
        """All caption embeddings: (caption ids, image ids, texts, (n, D) float32); loaded once by the engine."""
        if not self.catalog.has_captions:
            raise EngineError(f"{self.catalog.index_dir}: this index has no caption embeddings (built with "
                              "--no-text); use --target images")
        table = self.cursor().sql(
            "SELECT caption_id, image_id, text, embedding FROM captions ORDER BY caption_id").to_arrow_table()
        matrix = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                            dtype=np.float32).reshape(table.num_rows, -1)
        return (table.column("caption_id").to_numpy().astype(np.int64),
                table.column("image_id").to_numpy().astype(np.int64),
                table.column("text").to_pylist(), matrix)


def _data_root_ranges(index_dir: Path, index_config) -> list[tuple[int, int, str]]:
    """(first id, last id, data root) per shard, read from each shard's own metadata."""
    from indexing.shards import read_metadata

    ranges = []
    for shard in index_config.shards:
        if shard.first_id is None or shard.last_id is None:
            continue
        root = read_metadata(index_dir / shard.file).get("data_root", "")
        if root:
            ranges.append((shard.first_id, shard.last_id, root))
    return ranges
