"""Which index ``engine query`` uses when ``--index`` is not given.

1. ``$ENGINE_INDEX`` when set;
2. the last index ``engine index`` finished, recorded in ``$ENGINE_HOME/last_index`` (default home
   ``~/.cache/rs-engine``), when that folder still holds an ``index.json``;
3. otherwise the default index in ``$ENGINE_HOME/indexes/default``, built on first use from
   ``engine.data.default_dataset_path()`` (the shared UCM copy, else the embedded 210-image sample) with the
   shipped default model — the same work as ``engine index <data> --out <that folder>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.errors import ConfigError

HOME_ENV = "ENGINE_HOME"
INDEX_ENV = "ENGINE_INDEX"
LAST_INDEX_FILE = "last_index"
DEFAULT_INDEX_NAME = "indexes/default"
INDEX_JSON = "index.json"


def engine_home() -> Path:
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "rs-engine"


def record_last_index(index_dir: Path) -> None:
    """Remember ``index_dir`` as the default for ``engine query``; a read-only home only costs the convenience."""
    home = engine_home()
    target = home / LAST_INDEX_FILE
    temp = target.with_name(f".{LAST_INDEX_FILE}.{os.getpid()}.tmp")
    try:
        home.mkdir(parents=True, exist_ok=True)
        temp.write_text(str(Path(index_dir).resolve()) + "\n", encoding="utf-8")
        os.replace(temp, target)
    except OSError as error:
        temp.unlink(missing_ok=True)
        print(f"warning: could not record the last index in {target}: {error.strerror or error}", file=sys.stderr)


def last_index() -> Path | None:
    try:
        recorded = (engine_home() / LAST_INDEX_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = Path(recorded)
    return path if recorded and (path / INDEX_JSON).is_file() else None


def resolve_index_dir(explicit: Path | None) -> Path:
    """The index folder to open (building the default one on first use when nothing else is known)."""
    if explicit is not None:
        return explicit
    configured = os.environ.get(INDEX_ENV)
    if configured:
        return Path(configured).expanduser()
    recorded = last_index()
    if recorded is not None:
        return recorded
    default = engine_home() / DEFAULT_INDEX_NAME
    if not (default / INDEX_JSON).is_file():
        _build_default_index(default)
    return default


def _build_default_index(out: Path) -> None:
    from engine.data import default_dataset_path
    from indexing.build import IndexOptions, print_summary, run_index

    data = default_dataset_path()
    print(f"note: no index given and none built yet: indexing {data} into {out} (once)", file=sys.stderr)
    try:
        print_summary(run_index(IndexOptions(data_dir=data, out=out)))
    except ConfigError as error:
        raise ConfigError(f"no index to search: pass --index INDEX_DIR (building the default index failed: "
                          f"{error})") from None
