"""Which index ``engine query`` / ``engine serve`` use when ``--index`` is not given, and saying so.

1. ``$ENGINE_INDEX`` when set;
2. the last index ``engine index`` finished *in this project*, recorded in ``<project>/.rs-engine/last_index``
   (written and read by ``indexing.last_index``, the builder's side). The project folder is the nearest folder at or above the working directory that holds ``.rs-engine/`` or
   ``.git``, else the working directory itself (``$ENGINE_PROJECT`` names it explicitly). So two checkouts or
   projects never pick up each other's index (a per-user cache did: every project shared one "last index");
3. otherwise the default index in ``$ENGINE_HOME/indexes/default`` (default home ``~/.cache/rs-engine``), built
   on first use from ``engine.data.default_dataset_path()`` (the shared UCM copy, else the embedded 210-image
   sample) with the shipped default model — the same work as ``engine index <data> --out <that folder>``.

``resolve_index`` returns the folder with a sentence saying where it came from, which the commands print.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.errors import ConfigError
from engine.home import HOME_ENV, engine_home  # noqa: F401  -- HOME_ENV is part of this module's interface
from indexing.last_index import last_index, last_index_file
from indexing.layout import is_complete

INDEX_ENV = "ENGINE_INDEX"
DEFAULT_INDEX_NAME = "indexes/default"


def resolve_index(explicit: Path | None) -> tuple[Path, str | None]:
    """(index folder, how it was chosen — None when given with --index); builds the default index on first use."""
    if explicit is not None:
        return explicit, None
    configured = os.environ.get(INDEX_ENV)
    if configured:
        return Path(configured).expanduser(), f"using index {configured} (from ${INDEX_ENV})"
    recorded = last_index()
    if recorded is not None:
        return recorded, (f"using index {recorded} (the last one built in this project, recorded in "
                          f"{last_index_file()}; pass --index to choose)")
    default = engine_home() / DEFAULT_INDEX_NAME
    if not is_complete(default):
        _build_default_index(default)
    return default, f"using the default index {default} (no index built in this project; pass --index to choose)"


def resolve_index_dir(explicit: Path | None) -> Path:
    """The index folder to open (building the default one on first use when nothing else is known)."""
    return resolve_index(explicit)[0]


def _build_default_index(out: Path) -> None:
    from engine.data import default_dataset_path
    from indexing.build import IndexOptions, print_summary, run_index

    data = default_dataset_path()
    print(f"note: no index given and none built yet: indexing {data} into {out} (once)", file=sys.stderr)
    try:
        print_summary(run_index(IndexOptions(data_dir=data, out=out, remember=False)))
    except ConfigError as error:
        raise ConfigError(f"no index to search: pass --index INDEX_DIR (building the default index failed: "
                          f"{error})") from None
