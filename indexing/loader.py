"""Open a finished index folder for querying: ``index.json`` + ``faiss.index`` + the DuckDB catalog.

The folder is self-contained: nothing but its own files (and the model the caller loads) is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from indexing.catalog import Catalog
from indexing.manifest import IndexConfig
from indexing.layout import FAISS_SHARDS_DIR


@dataclass
class LoadedIndex:
    """A ready-to-search index: its recorded config, the faiss index (CPU) and the metadata catalog."""

    root: Path
    config: IndexConfig
    index: Any  # faiss.Index
    catalog: Catalog

    def close(self) -> None:
        """Release the catalog and, for a Ray-served index, its shard actors."""
        self.catalog.close()
        if hasattr(self.index, "close"):
            self.index.close()

    def check_model(self, model: Any) -> None:
        """Refuse a model whose fingerprint differs from the one the index was built with."""
        fingerprint = model.fingerprint()
        if fingerprint != self.config.model_fingerprint:
            raise ConfigError(f"{self.root}: index was built with model {self.config.model_fingerprint[:16]} "
                              f"({self.config.model_spec}) but the loaded model is {fingerprint[:16]}; "
                              "load the same model or rebuild the index")


SHARD_BACKENDS = ("local", "ray")


def load_index(index_dir: str | Path, shard_backend: str = "local", ray_address: str = "auto") -> LoadedIndex:
    """Open an index folder. A faiss part split into shards (``engine index --faiss-shards N``) is served by
    ``shard_backend``: ``local`` = faiss ``IndexShards`` in this process, ``ray`` = one Ray actor per shard
    (``indexing.ray_shards``; an unsharded index then gets one actor)."""
    root = Path(index_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: index folder not found")
    if shard_backend not in SHARD_BACKENDS:
        raise ConfigError(f"--shard-backend must be one of {', '.join(SHARD_BACKENDS)}, got {shard_backend!r}")
    config = IndexConfig.load(root)
    paths = [root / name for name in config.faiss_shards] or [root / config.faiss_file]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{path}: missing; rerun `engine index` with the same arguments to finish it")
    if shard_backend == "ray":
        from indexing.ray_shards import RayShardedIndex

        index = RayShardedIndex.start(paths, config.embed_dim, ray_address)
    else:
        parts = [_read_faiss(path, config) for path in paths]
        if len(parts) == 1:
            index = parts[0]
        else:
            from indexing.faiss_build import merged_view

            index = merged_view(parts)
    if index.d != config.embed_dim or index.ntotal != config.image_count:
        where = paths[0] if len(paths) == 1 else root / FAISS_SHARDS_DIR
        raise ConfigError(f"{where}: holds {index.ntotal} vectors of dim {index.d}, index.json says "
                          f"{config.image_count} of dim {config.embed_dim}; rebuild the index")
    return LoadedIndex(root=root, config=config, index=index, catalog=Catalog(root))


def _read_faiss(path: Path, config: IndexConfig):
    import faiss

    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:
        raise ConfigError(f"{path}: unreadable faiss index ({str(error).splitlines()[-1]})") from None
    if index.d != config.embed_dim:
        raise ConfigError(f"{path}: holds vectors of dim {index.d}, index.json says {config.embed_dim}; "
                          "rebuild the index")
    return index
