"""Write a small text file so that readers see the old content or the new, never half of it.

A temporary file is created beside the target (same file system) and renamed over it; an interrupted write
removes the temporary file. Parquet shards and FAISS files use ``indexing.shards.replace_atomically`` instead,
which also fsyncs and names its temporaries so a resumed build can sweep them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
