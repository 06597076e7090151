"""DuckDB catalog: SQL views straight over the Parquet shards (nothing is copied or imported).

Views: ``images`` (one row per indexed image, columns of the image shards) and ``captions`` (caption shards).
Embeddings are stored as fixed-size lists, which DuckDB reads as ``FLOAT[]``; cast to ``FLOAT[d]`` before
array functions (``array_inner_product(embedding::FLOAT[512], ...)``).
A third view, ``query_images``, adds ``class`` as an alias of ``label``; user ``--where`` conditions run
against it only after ``indexing.sql_filter`` has checked them, on a connection that is locked right after the
views are created (no file access outside the index's shard folders, no extensions).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np

from engine.errors import ConfigError
from indexing.layout import SHARDS_DIR, SHARD_PATTERN, TEXT_SHARDS_DIR
from indexing.sql_filter import FILTER_VIEW, filter_columns, lock_connection, run_filter

METADATA_COLUMNS = "image_id, source_id, path, split, label, captions, width, height"


@dataclass(frozen=True)
class ImageMeta:
    image_id: int
    source_id: int
    path: str
    split: str | None
    label: str | None
    captions: list[str]
    width: int
    height: int


@dataclass
class CatalogStats:
    images: int = 0
    captions: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"images": self.images, "captions": self.captions, "per_split": self.per_split,
                           "per_class": self.per_class}, indent=2)


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


class Catalog:
    """Read-only SQL access to an index folder's shards (an in-memory DuckDB connection with two views)."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = Path(index_dir)
        self.connection = duckdb.connect(":memory:")
        image_glob = self.index_dir / SHARDS_DIR / SHARD_PATTERN
        if not list((self.index_dir / SHARDS_DIR).glob(SHARD_PATTERN)):
            raise ConfigError(f"{self.index_dir}: no shards in {SHARDS_DIR}/; build the index with `engine index`")
        self.connection.execute(f"CREATE VIEW images AS SELECT * FROM read_parquet({_quote(image_glob)}, "
                                "union_by_name = true)")  # shards with chips of GeoTIFF scenes add geo columns
        self.has_captions = bool(list((self.index_dir / TEXT_SHARDS_DIR).glob(SHARD_PATTERN)))
        if self.has_captions:
            text_glob = self.index_dir / TEXT_SHARDS_DIR / SHARD_PATTERN
            self.connection.execute(f"CREATE VIEW captions AS SELECT * FROM read_parquet({_quote(text_glob)})")
        self.connection.execute(f'CREATE VIEW {FILTER_VIEW} AS SELECT *, label AS "class" FROM images')
        self.filter_columns = filter_columns(self.connection)
        self.has_geo = "lon_min" in self.filter_columns  # chips of GeoTIFF scenes (indexing.geo_rows)
        lock_connection(self.connection, [self.index_dir / SHARDS_DIR, self.index_dir / TEXT_SHARDS_DIR])

    def close(self) -> None:
        self.connection.close()

    def lookup(self, ids: list[int] | np.ndarray) -> list[ImageMeta]:
        """Metadata rows for ``ids``, in the order given (unknown ids are left out)."""
        wanted = [int(value) for value in ids]
        if not wanted:
            return []
        rows = self.connection.execute(
            f"SELECT {METADATA_COLUMNS} FROM images WHERE image_id IN (SELECT unnest($ids))", {"ids": wanted}
        ).fetchall()
        by_id = {row[0]: ImageMeta(*row[:5], list(row[5] or []), *row[6:]) for row in rows}
        return [by_id[value] for value in wanted if value in by_id]

    def filter_ids(self, where: str) -> np.ndarray:
        """Ids of images matching a user SQL condition, e.g. ``split = 'test' AND label = 'airplane'``."""
        return np.asarray(run_filter(self.connection, where, self.filter_columns), dtype=np.int64)

    def stats(self) -> CatalogStats:
        stats = CatalogStats()
        stats.images = self.connection.execute("SELECT count(*) FROM images").fetchone()[0]
        if self.has_captions:
            stats.captions = self.connection.execute("SELECT count(*) FROM captions").fetchone()[0]
        splits = self.connection.execute("SELECT coalesce(split, 'none'), count(*) FROM images GROUP BY 1").fetchall()
        labels = self.connection.execute("SELECT coalesce(label, 'none'), count(*) FROM images GROUP BY 1").fetchall()
        stats.per_split = dict(sorted(Counter(dict(splits)).items()))
        stats.per_class = dict(sorted(Counter(dict(labels)).items()))
        return stats
