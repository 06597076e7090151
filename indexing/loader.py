"""Open a finished index folder for querying: ``index.json`` + ``faiss.index`` + the DuckDB catalog.

The folder is self-contained: nothing but its own files (and the model the caller loads) is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from indexing.catalog import Catalog
from indexing.config import IndexConfig


@dataclass
class LoadedIndex:
    """A ready-to-search index: its recorded config, the faiss index (CPU) and the metadata catalog."""

    root: Path
    config: IndexConfig
    index: Any  # faiss.Index
    catalog: Catalog

    def check_model(self, model: Any) -> None:
        """Refuse a model whose fingerprint differs from the one the index was built with."""
        fingerprint = model.fingerprint()
        if fingerprint != self.config.model_fingerprint:
            raise ConfigError(f"{self.root}: index was built with model {self.config.model_fingerprint[:16]} "
                              f"({self.config.model_spec}) but the loaded model is {fingerprint[:16]}; "
                              "load the same model or rebuild the index")


def load_index(index_dir: str | Path) -> LoadedIndex:
    import faiss

    root = Path(index_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: index folder not found")
    config = IndexConfig.load(root)
    faiss_path = root / config.faiss_file
    if not faiss_path.is_file():
        raise ConfigError(f"{faiss_path}: missing; rerun `engine index` with the same arguments to finish it")
    try:
        index = faiss.read_index(str(faiss_path))
    except RuntimeError as error:
        raise ConfigError(f"{faiss_path}: unreadable faiss index ({str(error).splitlines()[-1]})") from None
    if index.d != config.embed_dim or index.ntotal != config.image_count:
        raise ConfigError(f"{faiss_path}: holds {index.ntotal} vectors of dim {index.d}, index.json says "
                          f"{config.image_count} of dim {config.embed_dim}; rebuild the index")
    return LoadedIndex(root=root, config=config, index=index, catalog=Catalog(root))
