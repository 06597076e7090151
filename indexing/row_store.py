"""Random access to indexed rows by image id: a memory-mapped Arrow copy of the image shards (``rows.arrow``).

Why: a warm server needs the metadata (path, class, captions) and sometimes the stored embeddings of ~10–50
ids per query. Parquet cannot be read by row, so DuckDB answers ``image_id IN (...)`` by scanning the shards,
which over 1 M rows costs more than the whole latency budget. An uncompressed Arrow IPC file can be
memory-mapped: ``take`` touches only the pages of the wanted rows and the OS page cache (not the process heap)
holds what is hot (measured costs of both: docs/benchmarks.md, "Measurements behind design choices").

The file is derived data: it is rebuilt whenever the shard set changes (a signature of every shard's name,
size and mtime is stored in its schema metadata), written atomically, and never needed to rebuild anything
else. ``engine index`` writes it at the end of a build; a reader of an index folder it cannot write to falls
back to the DuckDB catalog (``RowStore.open`` returns None).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import EngineError
from engine.atomic import replace_atomically
from indexing.layout import ROWS_FILE
from indexing.shards import shard_files

SIGNATURE_KEY = b"engine.shard_signature"
MISSING = -1
SLICE_ROWS_MAX = 64  # up to this many ids, one zero-copy slice per row beats a take per batch (docs/benchmarks.md)


def shard_signature(index_dir: Path) -> str:
    """Name, size and mtime of every image shard: changes whenever a shard is added, replaced or removed."""
    entries = []
    for file in shard_files(index_dir):
        stat = file.stat()
        entries.append([file.name, stat.st_size, stat.st_mtime_ns])
    return json.dumps(entries)


def write_row_file(index_dir: Path) -> Path:
    """(Re)write ``INDEX_DIR/rows.arrow`` from the image shards, one record batch per shard (bounded memory)."""
    files = shard_files(index_dir)
    if not files:
        raise EngineError(f"{index_dir}: no image shards to copy into {ROWS_FILE}")
    # shards with chips of GeoTIFF scenes carry extra columns (indexing.geo_rows): the file has them all
    unified = pa.unify_schemas([pq.read_schema(file).remove_metadata() for file in files])
    schema = unified.with_metadata({SIGNATURE_KEY: shard_signature(index_dir)})

    def write(temp: Path) -> None:
        with pa.OSFile(str(temp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for file in files:
                table = pq.read_table(file).replace_schema_metadata(None)
                for name in unified.names:
                    if name not in table.column_names:
                        table = table.append_column(unified.field(name), pa.nulls(len(table), unified.field(name).type))
                writer.write_table(table.select(unified.names).cast(unified))

    target = index_dir / ROWS_FILE
    replace_atomically(target, write)
    return target


class RowStore:
    """Rows of ``rows.arrow`` by image id (the table is memory-mapped; only the id index is in the heap)."""

    def __init__(self, schema: pa.Schema, batches: list[pa.RecordBatch]) -> None:
        # Batches are kept apart: Arrow's take on a chunked column first concatenates the chunks (a copy of
        # the whole column, docs/benchmarks.md), a take inside one batch touches only those rows.
        self.schema, self.batches = schema, batches
        self.starts = np.cumsum([0] + [batch.num_rows for batch in batches])
        ids = np.concatenate([batch.column(0).to_numpy() for batch in batches]) if batches else np.zeros(0, np.int64)
        self.order = np.argsort(ids, kind="stable")
        self.sorted_ids = ids[self.order]
        self.dim = schema.field("embedding").type.list_size

    @classmethod
    def open(cls, index_dir: Path) -> "RowStore | None":
        """The index's row store, rebuilt first when missing or stale; None when it cannot be written."""
        path = index_dir / ROWS_FILE
        signature = shard_signature(index_dir)
        table = _read_mapped(path)
        if table is None or (table.schema.metadata or {}).get(SIGNATURE_KEY, b"").decode() != signature:
            try:
                write_row_file(index_dir)
            except EngineError:
                return None  # read-only or full disk: the caller keeps using the DuckDB catalog
            table = _read_mapped(path)
        return cls(table.schema, table.batches) if table is not None else None

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ``ids`` in the file (``MISSING`` for unknown ids)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.sorted_ids) == 0:
            return np.full(len(ids), MISSING, np.int64)
        slots = np.minimum(np.searchsorted(self.sorted_ids, ids), len(self.sorted_ids) - 1)
        return np.where(self.sorted_ids[slots] == ids, self.order[slots], MISSING)

    def take(self, ids: np.ndarray, columns: list[str]) -> pa.Table:
        """The known ``ids``' rows (in the order given, unknown ids left out), only ``columns``."""
        rows = self.positions(ids)
        rows = rows[rows != MISSING]
        batch_of = np.searchsorted(self.starts, rows, side="right") - 1
        if 0 < len(rows) <= SLICE_ROWS_MAX:  # a query's hits: already in the order given
            return pa.Table.from_batches([self.batches[number].slice(int(row - self.starts[number]), 1).select(columns)
                                          for row, number in zip(rows, batch_of)])
        parts, where = [], []
        for number in np.unique(batch_of):
            chosen = np.flatnonzero(batch_of == number)
            batch = self.batches[number].select(columns)
            parts.append(batch.take(pa.array(rows[chosen] - self.starts[number], pa.int64())))
            where.append(chosen)
        if not parts:
            return pa.schema([self.schema.field(name) for name in columns]).empty_table()
        table = pa.Table.from_batches(parts)
        return table.take(pa.array(np.argsort(np.concatenate(where), kind="stable"), pa.int64()))

    def embeddings(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found ids in id order, (n, D) float32) like the catalog's ``embeddings_for``."""
        wanted = np.unique(np.asarray(ids, dtype=np.int64))
        table = self.take(wanted, ["image_id", "embedding"])
        found = table.column("image_id").to_numpy().astype(np.int64)
        vectors = table.column("embedding").combine_chunks()
        if len(found) == 0:
            return found, np.zeros((0, self.dim), np.float32)
        matrix = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return found, matrix.reshape(len(found), self.dim)


def _read_mapped(path: Path) -> "MappedRows | None":
    if not path.is_file():
        return None
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        return MappedRows(reader.schema, [reader.get_batch(number) for number in range(reader.num_record_batches)])
    except (OSError, pa.ArrowInvalid):
        return None  # truncated or foreign file: rebuilt by the caller


class MappedRows:
    """The record batches of a memory-mapped row file and its schema (with the shard signature)."""

    def __init__(self, schema: pa.Schema, batches: list[pa.RecordBatch]) -> None:
        self.schema, self.batches = schema, batches
