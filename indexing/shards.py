"""Parquet shards: the durable, self-describing store of embeddings and metadata (FAISS is rebuilt from them).

Image shards ``shards/part-KKKKK.parquet`` and caption shards ``text_shards/part-KKKKK.parquet`` share the shard
number K. Shard K of a build segment holds the K-th block of ``shard_size`` planned images, so a resumed run
writes byte-for-byte the same rows. Every file is written with ``engine.atomic``
(hidden temp name in the same folder, fsynced and renamed), so a reader or a resumed run never sees half a
shard; the temp name does not end in ``.parquet``, so DuckDB's ``*.parquet`` glob never picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import EngineError
from indexing.layout import SHARDS_DIR, SHARD_PATTERN

META_PREFIX = "engine."


def image_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("source_id", pa.int64()),  # the dataset's own id (differs from image_id only after renumbering)
        pa.field("path", pa.string(), nullable=False),  # relative to the data root recorded in the metadata
        pa.field("split", pa.string()),
        pa.field("label", pa.string()),
        pa.field("captions", pa.list_(pa.string())),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ])


def text_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("caption_id", pa.int64(), nullable=False),
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
    ])


@dataclass
class ImageRows:
    """Column buffers of one image shard (filled in dataset order, then written once)."""

    image_id: list[int] = field(default_factory=list)
    source_id: list[int] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    split: list[str | None] = field(default_factory=list)
    label: list[str | None] = field(default_factory=list)
    captions: list[list[str]] = field(default_factory=list)
    width: list[int] = field(default_factory=list)
    height: list[int] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)  # one (D,) float32 row per image
    chips: list = field(default_factory=list)  # engine.data.geo_scenes.ChipSpec or None per row (indexing.geo_rows)

    def __len__(self) -> int:
        return len(self.image_id)


@dataclass
class TextRows:
    caption_id: list[int] = field(default_factory=list)
    image_id: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # (N, D) float32

    def __len__(self) -> int:
        return len(self.caption_id)


def _embedding_array(matrix: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(values, type=pa.float32()), dim)


def _metadata(values: dict[str, str]) -> dict[bytes, bytes]:
    return {f"{META_PREFIX}{key}".encode(): str(value).encode() for key, value in values.items()}


def image_table(rows: ImageRows, dim: int, metadata: dict[str, str]) -> pa.Table:
    matrix = np.stack(rows.embeddings) if rows.embeddings else np.zeros((0, dim), np.float32)
    columns = [
        pa.array(rows.image_id, pa.int64()), pa.array(rows.source_id, pa.int64()), pa.array(rows.path, pa.string()),
        pa.array(rows.split, pa.string()), pa.array(rows.label, pa.string()),
        pa.array(rows.captions, pa.list_(pa.string())), _embedding_array(matrix, dim),
        pa.array(rows.width, pa.int32()), pa.array(rows.height, pa.int32()),
    ]
    table = pa.Table.from_arrays(columns, schema=image_schema(dim))
    if any(chip is not None for chip in rows.chips):  # chips of GeoTIFF scenes: where each one is
        from indexing.geo_rows import with_geo_columns

        table = with_geo_columns(table, rows.path, rows.chips)
    return table.replace_schema_metadata(_metadata(metadata))


def text_table(rows: TextRows, dim: int, metadata: dict[str, str]) -> pa.Table:
    matrix = rows.embeddings if rows.embeddings is not None else np.zeros((0, dim), np.float32)
    columns = [pa.array(rows.caption_id, pa.int64()), pa.array(rows.image_id, pa.int64()),
               pa.array(rows.text, pa.string()), _embedding_array(matrix, dim)]
    return pa.Table.from_arrays(columns, schema=text_schema(dim).with_metadata(_metadata(metadata)))


def shard_files(index_dir: Path, subdir: str = SHARDS_DIR) -> list[Path]:
    folder = index_dir / subdir
    return sorted(folder.glob(SHARD_PATTERN)) if folder.is_dir() else []


def read_metadata(path: Path) -> dict[str, str]:
    """The ``engine.*`` key-value metadata of one shard, without the prefix."""
    raw = pq.read_schema(path).metadata or {}
    return {key.decode()[len(META_PREFIX):]: value.decode() for key, value in raw.items()
            if key.decode().startswith(META_PREFIX)}


def read_columns(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as error:
        raise EngineError(f"{path}: unreadable shard ({error}); delete it and rerun to re-encode it") from None


def embeddings_of(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """(N, D) float32 matrix of a fixed-size-list column, without a Python-level copy per row."""
    chunked = table.column(column).combine_chunks()
    dim = chunked.type.list_size
    return chunked.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
