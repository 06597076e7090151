"""Check that a refactor changed nothing a user sees: two index folders built from the same data and two
``engine eval`` result files, compared field by field (``python -m release.compare_builds``).

Index folders: every Parquet column of every image and caption shard must be equal (ids, paths, labels, captions,
embeddings bit for bit), the shards' ``engine.*`` metadata too, and both ``faiss.index`` files must answer the
same random queries identically; ``index.json`` may differ only in when and how long it was built. Eval files:
``recalls`` and ``recalls_pessimistic`` must be equal; the other differing keys are listed. Exit 0 when
identical, 1 otherwise. docs/refactor-check.md records a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from indexing.layout import FAISS_FILE, INDEX_JSON, SHARD_PATTERN, SHARDS_DIR, TEXT_SHARDS_DIR

VOLATILE_INDEX_KEYS = {"build_seconds", "created_utc"}


def compare_indexes(ref: Path, new: Path) -> bool:
    import faiss
    import pyarrow.parquet as pq

    same = True
    for sub in (SHARDS_DIR, TEXT_SHARDS_DIR):
        names = sorted(path.name for path in (ref / sub).glob(SHARD_PATTERN))
        if names != sorted(path.name for path in (new / sub).glob(SHARD_PATTERN)):
            print(f"{sub}/: different shard files")
            same = False
            continue
        for name in names:
            a, b = pq.read_table(ref / sub / name), pq.read_table(new / sub / name)
            differing = [column for column in a.column_names
                         if column not in b.column_names or not a.column(column).equals(b.column(column))]
            metadata_same = (a.schema.metadata or {}) == (b.schema.metadata or {})
            print(f"{sub}/{name}: {a.num_rows} rows, columns {'identical' if not differing else differing}, "
                  f"metadata {'identical' if metadata_same else 'DIFFERENT'}")
            same &= not differing and metadata_same and a.column_names == b.column_names
    config_a, config_b = (json.loads((folder / INDEX_JSON).read_text()) for folder in (ref, new))
    differing = sorted(key for key in set(config_a) | set(config_b) if config_a.get(key) != config_b.get(key))
    print(f"{INDEX_JSON}: differing keys {differing}")
    same &= set(differing) <= VOLATILE_INDEX_KEYS
    index_a, index_b = (faiss.read_index(str(folder / FAISS_FILE)) for folder in (ref, new))
    queries = np.random.default_rng(0).standard_normal((20, index_a.d)).astype(np.float32)
    answers_same = index_a.ntotal == index_b.ntotal and all(
        np.array_equal(x, y) for x, y in zip(index_a.search(queries, 10), index_b.search(queries, 10)))
    print(f"{FAISS_FILE}: {index_a.ntotal} vectors, answers {'identical' if answers_same else 'DIFFERENT'}")
    return same and answers_same


def compare_results(ref: Path, new: Path) -> bool:
    a, b = (json.loads(path.read_text()) for path in (ref, new))
    same = True
    for key in ("recalls", "recalls_pessimistic"):
        equal = a.get(key) == b.get(key)
        print(f"{key}: {'identical' if equal else 'DIFFERENT'} {b.get(key)}")
        same &= equal
    print("other differing keys:", sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key)))
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", nargs=2, type=Path, metavar=("REF", "NEW"), help="two index folders")
    parser.add_argument("--eval", nargs=2, type=Path, metavar=("REF", "NEW"), help="two engine eval result files")
    args = parser.parse_args(argv)
    same = True
    if args.index:
        same &= compare_indexes(*args.index)
    if args.eval:
        same &= compare_results(*args.eval)
    print("IDENTICAL" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
