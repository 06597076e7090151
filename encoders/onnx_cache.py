"""Exported ONNX graphs kept on disk between runs, so a build or a server start skips the export.

Why: every ``engine index`` and ``engine serve`` used to export its encoders to ONNX again (the image backbone
and the caption graph: seconds per build, a measurable share of indexing a few thousand tiles; docs/benchmarks.md,
"Image encoding near the limit"). The export is a pure function of the model and the code that traces it, so
its bytes are kept and reused.

Key: sha256 of the graph's name and input spec, the model's one-view fingerprint (config + every weight; the
graphs encode one view, so every number of test-time views shares them), the torch
version, the opset, and the source of every ``encoders/*.py`` file (any code change re-exports). The callers
still check every session against the eager model on probes; when a cached graph fails that check it is exported
afresh (``refresh``) and replaced, so a stale or damaged file costs one export, never a wrong embedding.

Where: ``$ENGINE_HOME/compiled/<key>.onnx`` (``engine.home``), written atomically; at most ``MAX_FILES`` graphs,
the least recently used removed first. A folder that cannot be written means no cache, never an error.
``ENGINE_COMPILED_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from engine.atomic import AtomicWriteError, replace_atomically
from engine.home import engine_home

CACHE_ENV = "ENGINE_COMPILED_CACHE"
FOLDER = "compiled"
SUFFIX = ".onnx"
T = TypeVar("T")
MAX_FILES = 8  # a model's image + caption + query graphs, for a few models; each is 10-100 MB


def enabled() -> bool:
    return os.environ.get(CACHE_ENV, "1").strip() not in {"0", "false", "off", "no"}


def cache_folder() -> Path:
    return engine_home() / FOLDER


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """sha256 over the source of the encoders package (the code that builds and traces every graph)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cache_key(model: Any, graph: str, spec: dict[str, Any]) -> str | None:
    """The file stem for ``graph`` of ``model`` with input ``spec``; None for a model without a fingerprint."""
    fingerprint = getattr(model, "fingerprint", None)
    if not callable(fingerprint):
        return None
    import torch

    try:
        identity = fingerprint(one_view=True)
    except TypeError:  # a stand-in model without the one-view identity: no cache
        return None
    parts = {"graph": graph, "spec": spec, "model": identity, "torch": torch.__version__,
             "code": _code_digest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def exported(model: Any, graph: str, spec: dict[str, Any], export: Callable[[], bytes],
             refresh: bool = False) -> bytes:
    """ONNX bytes of ``graph``: the cached file when there is one (and not ``refresh``), else ``export()``, whose
    result is then stored."""
    path = _path(model, graph, spec)
    if path is None:
        return export()
    if not refresh:
        try:
            data = path.read_bytes()
            os.utime(path)  # most recently used
            return data
        except OSError:
            pass
    data = export()
    _store(path, data)
    return data


def checked(model: Any, graph: str, spec: dict[str, Any], build: Callable[[bool], T | None]) -> T | None:
    """``build(refresh=False)``, the caller's export-and-check against the eager model; when it fails (None)
    and the graph came from the cache (stale, damaged), ``build(refresh=True)`` once, which exports afresh."""
    cached = _path(model, graph, spec)
    cached = cached is not None and cached.is_file()
    built = build(False)
    return build(True) if built is None and cached else built


def _path(model: Any, graph: str, spec: dict[str, Any]) -> Path | None:
    key = cache_key(model, graph, spec) if enabled() else None
    return None if key is None else cache_folder() / f"{key}{SUFFIX}"


def _store(path: Path, data: bytes) -> None:
    try:
        replace_atomically(path, lambda temp: temp.write_bytes(data), durable=False)
    except (AtomicWriteError, OSError):
        return  # read-only or full disk, or a file where the folder should be: run without the cache
    _evict(path.parent)


def _evict(folder: Path) -> None:
    try:
        files = sorted(folder.glob(f"*{SUFFIX}"), key=lambda path: path.stat().st_mtime, reverse=True)
    except OSError:
        return
    for stale in files[MAX_FILES:]:
        stale.unlink(missing_ok=True)
