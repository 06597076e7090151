"""This project's last finished index: ``<project>/.rs-engine/last_index`` names it (``engine index`` writes it,
``engine query`` / ``engine serve`` read it when ``--index`` is not given: ``engine.query.state``).

The project folder is the nearest folder at or above the working directory that holds ``.rs-engine/`` or
``.git``, else the working directory itself (``$ENGINE_PROJECT`` names it explicitly), so two checkouts never
pick up each other's index.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.atomic import AtomicWriteError, write_text_atomic
from indexing.layout import is_complete

PROJECT_ENV = "ENGINE_PROJECT"
STATE_DIR = ".rs-engine"
LAST_INDEX_FILE = "last_index"


def project_dir(start: Path | None = None) -> Path:
    """The project folder whose ``.rs-engine/last_index`` is read and written (see the module docstring)."""
    configured = os.environ.get(PROJECT_ENV)
    if configured:
        return Path(configured).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STATE_DIR).is_dir() or (folder / ".git").exists():
            return folder
    return here


def last_index_file() -> Path:
    return project_dir() / STATE_DIR / LAST_INDEX_FILE


def record_last_index(index_dir: Path) -> None:
    """Remember ``index_dir`` as this project's default for ``engine query``; failing only costs the convenience."""
    target = last_index_file()
    try:
        write_text_atomic(target, str(Path(index_dir).resolve()) + "\n")
    except AtomicWriteError as failed:
        error = failed.os_error
        print(f"warning: could not record the last index in {target}: {error.strerror or error}", file=sys.stderr)


def last_index() -> Path | None:
    try:
        recorded = last_index_file().read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = Path(recorded)
    return path if recorded and is_complete(path) else None
