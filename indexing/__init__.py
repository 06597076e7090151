"""Indexing: Parquet shards, FAISS index, DuckDB catalog and background masking (``engine index``).

This package's ``__init__`` stays torch-free so the CLI and pure modules (index choice, catalog, shards) import
fast; ``indexing.encode`` runs ``engine.torch_shim.ensure_torchvision_importable()`` before it imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_index", "LoadedIndex", "choose_index", "IndexSpec"]


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so ``import indexing`` costs nothing until a name is used."""
    if name in ("load_index", "LoadedIndex"):
        from indexing import loader

        return getattr(loader, name)
    if name in ("choose_index", "IndexSpec"):
        from indexing import choose

        return getattr(choose, name)
    raise AttributeError(f"module 'indexing' has no attribute {name!r}")
