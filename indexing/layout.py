"""The index folder, named in one place: every file and folder ``engine index`` writes and the readers open.

::

    INDEX_DIR/
      manifest.json            what is being built: model, shard size, masking, segments (indexing.config.Manifest)
      plan/segment-SSS.parquet the images of one build segment, in order (indexing.plan)
      shards/part-KKKKK.parquet     image rows + embeddings, one file per shard (indexing.shards)
      text_shards/part-KKKKK.parquet caption rows + embeddings, same shard numbers (indexing.shards)
      skipped.jsonl            images that could not be read, one JSON line each (indexing.skipped)
      faiss.index              the vector index (indexing.faiss_build) — or, with --faiss-shards N:
      faiss_shards/part-KKK.index   its N parts
      rows.arrow               memory-mapped rows for by-id reads, rebuilt from the shards (indexing.row_store)
      index.json               written last: its presence means the folder is a complete index (indexing.config)
      build.lock               held while a build runs (indexing.lock)
      attention/layer<L>/      the query engine's attention-feature cache for reranking (engine.query.rerank.features)
      query_bank_offsets.npz   the images' query-bank offsets under one model's bank (engine.query.bank_offsets)
      query_bank_caption_offsets.npz   the captions' (image→text) offsets, likewise

Writers and readers take the names and paths from here; ``indexing.loader`` opens what ``indexing.build`` wrote.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST_FILE = "manifest.json"
PLAN_DIR = "plan"
SHARDS_DIR = "shards"
TEXT_SHARDS_DIR = "text_shards"
SHARD_PATTERN = "part-*.parquet"
SKIPPED_FILE = "skipped.jsonl"
FAISS_FILE = "faiss.index"
FAISS_SHARDS_DIR = "faiss_shards"
FAISS_SHARD_PATTERN = "part-*.index"
ROWS_FILE = "rows.arrow"
INDEX_JSON = "index.json"
LOCK_FILE = "build.lock"
ATTENTION_DIR = "attention"
BANK_OFFSETS_FILE = "query_bank_offsets.npz"
BANK_CAPTION_OFFSETS_FILE = "query_bank_caption_offsets.npz"

# Everything an index folder may hold: `engine index --out` refuses a folder with anything else in it.
OWN_ENTRIES = (SHARDS_DIR, TEXT_SHARDS_DIR, PLAN_DIR, MANIFEST_FILE, INDEX_JSON, FAISS_FILE, FAISS_SHARDS_DIR,
               ATTENTION_DIR, ROWS_FILE, SKIPPED_FILE, LOCK_FILE, BANK_OFFSETS_FILE,
               BANK_CAPTION_OFFSETS_FILE)
# Folders whose hidden temporaries a resumed build sweeps (engine.atomic.sweep_temps), besides the root.
WRITTEN_DIRS = (SHARDS_DIR, TEXT_SHARDS_DIR, PLAN_DIR)


def shard_name(shard_index: int) -> str:
    """``part-KKKKK.parquet``: image shard K and caption shard K share the number."""
    return f"part-{shard_index:05d}.parquet"


def plan_file_name(segment_number: int) -> str:
    """Relative to the index folder, as recorded in the manifest."""
    return f"{PLAN_DIR}/segment-{segment_number:03d}.parquet"


def faiss_shard_name(number: int) -> str:
    """Relative to the index folder, as recorded in index.json."""
    return f"{FAISS_SHARDS_DIR}/part-{number:03d}.index"


def is_complete(index_dir: Path) -> bool:
    """A finished index: ``index.json`` is written last."""
    return (Path(index_dir) / INDEX_JSON).is_file()
