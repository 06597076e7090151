"""The one atomic file writer: readers (and a resumed run) see the old file or the new one, never half of one.

``replace_atomically(path, write)`` lets ``write(temp)`` fill a hidden temporary file beside ``path`` (same file
system), fsyncs it, renames it over ``path`` (``os.replace`` is atomic on POSIX) and fsyncs the folder. The
temporary name is ``.<name>.<pid>-<thread>.tmp``: it never matches a reader's glob (``*.parquet``, ``*.json``)
and ``sweep_temps`` removes what a killed process left. An ``OSError`` becomes one :class:`AtomicWriteError`
line naming the file (and the temporary is removed); any other exception removes the temporary and propagates.

Thin wrappers, all path first: :func:`write_text_atomic`, :func:`write_json_atomic`, :func:`write_table_atomic`
(Parquet; pyarrow is imported only when called). :func:`make_readable` undoes a writer's private file modes.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import EngineError

TEMP_SUFFIX = ".tmp"


class AtomicWriteError(EngineError):
    """A file could not be written; ``os_error`` is the underlying error (callers may word their own line)."""

    def __init__(self, path: Path, os_error: OSError) -> None:
        super().__init__(f"cannot write {path}: {describe_os_error(os_error)}")
        self.path, self.os_error = path, os_error


def describe_os_error(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on device"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (is the folder writable?)"
    return error.strerror or str(error)


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{TEMP_SUFFIX}")


def replace_atomically(path: Path, write: Callable[[Path], Any], durable: bool = True) -> None:
    """Run ``write(temp_path)``, fsync, rename onto ``path``; on OSError remove the temp, raise AtomicWriteError.

    ``durable=False`` skips the two fsyncs, for caches that are cheap to recompute (still never half-written)."""
    path = Path(path)
    temp = temp_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temp)
        if durable:
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temp, path)
        if durable:
            _fsync_folder(path.parent)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise AtomicWriteError(path, error) from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomically(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def write_table_atomic(path: Path, table) -> None:
    """A pyarrow Table as one Parquet file."""
    import pyarrow.parquet as pq

    replace_atomically(path, lambda temp: pq.write_table(table, temp))


def make_readable(path: Path) -> None:
    """Give ``path`` the modes the process umask gives new files (0666) or folders (0777), where a writer made it
    private (mkdtemp 0700, safetensors 0600), so what one user saved loads for another."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def sweep_temps(folder: Path) -> int:
    """Delete temporaries a killed run left in ``folder`` (they are never valid data); returns how many."""
    if not folder.is_dir():
        return 0
    stale = [path for path in folder.glob(f".*{TEMP_SUFFIX}") if path.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _fsync_folder(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
