"""Which index ``engine query`` / ``engine serve`` use when ``--index`` is not given, and saying so.

1. ``$ENGINE_INDEX`` when set;
2. the last index ``engine index`` finished *in this project*, recorded in ``<project>/.rs-engine/last_index``.
   The project folder is the nearest folder at or above the working directory that holds ``.rs-engine/`` or
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

HOME_ENV = "ENGINE_HOME"
INDEX_ENV = "ENGINE_INDEX"
PROJECT_ENV = "ENGINE_PROJECT"
STATE_DIR = ".rs-engine"
LAST_INDEX_FILE = "last_index"
DEFAULT_INDEX_NAME = "indexes/default"
INDEX_JSON = "index.json"


def engine_home() -> Path:
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "rs-engine"


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
    temp = target.with_name(f".{LAST_INDEX_FILE}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp.write_text(str(Path(index_dir).resolve()) + "\n", encoding="utf-8")
        os.replace(temp, target)
    except OSError as error:
        temp.unlink(missing_ok=True)
        print(f"warning: could not record the last index in {target}: {error.strerror or error}", file=sys.stderr)


def last_index() -> Path | None:
    try:
        recorded = last_index_file().read_text(encoding="utf-8").strip()
    except OSError:
        return None
    path = Path(recorded)
    return path if recorded and (path / INDEX_JSON).is_file() else None


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
    if not (default / INDEX_JSON).is_file():
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
