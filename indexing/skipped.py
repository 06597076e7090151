"""``skipped.jsonl``: every image a build could not read, with the reason, one JSON object per line.

The records travel inside the image shards' metadata (``engine.skipped``, written atomically with the shard),
so a build resumed after ``kill -9`` still lists the images skipped before the kill; this module gathers them
into ``INDEX_DIR/skipped.jsonl`` (always written, empty when nothing was skipped) at the end of every build.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.atomic import write_text_atomic
from indexing.layout import SKIPPED_FILE
from indexing.shards import read_metadata, shard_files

SKIPPED_META = "skipped"


def collect_skipped(index_dir: Path) -> list[dict]:
    """Skipped images of every shard, in shard order: image_id, path (absolute when the root is known), reason."""
    records = []
    for shard in shard_files(Path(index_dir)):
        metadata = read_metadata(shard)
        entries = json.loads(metadata.get(SKIPPED_META) or "[]")
        root = metadata.get("data_root", "")
        for entry in entries:
            path = os.path.join(root, entry["path"]) if root else entry["path"]
            records.append({"image_id": entry["image_id"], "path": path, "reason": entry["reason"],
                            "shard": f"{shard.parent.name}/{shard.name}"})
    return records


def write_skipped_list(index_dir: Path) -> list[dict]:
    records = collect_skipped(index_dir)
    text = "".join(json.dumps(record) + "\n" for record in records)
    write_text_atomic(Path(index_dir) / SKIPPED_FILE, text)
    return records
