"""Typed records of an index folder: the build manifest (progress) and ``index.json`` (what a loader needs).

``manifest.json`` describes *what is being built*: model, shard size, masking, and the build segments (the
first build and each ``--append``), each with a plan file listing its images in order. Progress itself is
never recorded separately: a shard is done exactly when its Parquet file exists (it is renamed into place
complete), so a ``kill -9`` can never leave progress and data disagreeing.
``index.json`` is written last, after ``faiss.index``; its presence means the folder is a complete index.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.data.masking import MaskOptions
from engine.errors import ConfigError
from engine.atomic import write_text_atomic
from indexing.layout import FAISS_FILE, INDEX_JSON, MANIFEST_FILE

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Segment:
    """One build run over one data root: shards ``first_shard .. first_shard + shard_count - 1``."""

    plan_file: str
    data_root: str
    first_shard: int
    shard_count: int
    planned_images: int


@dataclass
class Manifest:
    model_fingerprint: str
    model_spec: str
    embed_dim: int
    shard_size: int
    with_text: bool
    mask: MaskOptions
    segments: list[Segment] = field(default_factory=list)
    tool_version: str = ""
    format_version: int = FORMAT_VERSION
    test_time_views: int | None = None  # None: built before the field existed, i.e. with the model's own setting

    @property
    def shard_total(self) -> int:
        return sum(segment.shard_count for segment in self.segments)

    def save(self, index_dir: Path) -> None:
        write_text_atomic(index_dir / MANIFEST_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, index_dir: Path) -> "Manifest | None":
        raw = _read_json(index_dir / MANIFEST_FILE)
        if raw is None:
            return None
        try:
            raw["mask"] = MaskOptions(**raw["mask"])
            raw["segments"] = [Segment(**segment) for segment in raw["segments"]]
            return cls(**raw)
        except (KeyError, TypeError) as error:
            raise ConfigError(f"{index_dir / MANIFEST_FILE}: malformed build manifest ({error}); "
                              "rebuild with --overwrite") from None


@dataclass(frozen=True)
class ShardInfo:
    file: str
    text_file: str | None
    rows: int
    text_rows: int
    first_id: int | None
    last_id: int | None


@dataclass
class IndexConfig:
    """Everything the query engine needs to load and trust the index (``INDEX_DIR/index.json``)."""

    model_fingerprint: str
    model_spec: str
    embed_dim: int
    metric: str
    factory: str
    index_params: dict[str, int]
    image_count: int
    caption_count: int
    skipped_images: int
    shards: list[ShardInfo]
    mask: MaskOptions
    data_roots: list[str]
    build_seconds: float
    built_on: str  # "cpu" or "cuda"
    tool_version: str
    created_utc: str
    faiss_file: str = FAISS_FILE
    format_version: int = FORMAT_VERSION
    calibration: dict | None = None  # indexing.calibrate.Calibration as a dict; None for exact indexes
    # Dihedral views each image embedding averages; the query engine encodes image queries the same way.
    # None: an index built before the field existed, with the model's own setting.
    test_time_views: int | None = None
    # Relative paths of the faiss shards when the faiss part is split (then faiss_file is not used); [] = one file.
    faiss_shards: list[str] = field(default_factory=list)

    def save(self, index_dir: Path) -> None:
        write_text_atomic(index_dir / INDEX_JSON, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, index_dir: Path) -> "IndexConfig":
        raw = _read_json(index_dir / INDEX_JSON)
        if raw is None:
            raise ConfigError(missing_index_message(Path(index_dir)))
        try:
            if raw.get("format_version") != FORMAT_VERSION:
                raise ConfigError(f"{index_dir / INDEX_JSON}: format_version {raw.get('format_version')!r}, "
                                  f"this tool reads {FORMAT_VERSION}")
            raw["mask"] = MaskOptions(**raw["mask"])
            raw["shards"] = [ShardInfo(**shard) for shard in raw["shards"]]
            return cls(**raw)
        except (KeyError, TypeError) as error:
            raise ConfigError(f"{index_dir / INDEX_JSON}: malformed ({error}); rebuild the index") from None


def missing_index_message(index_dir: Path) -> str:
    """Why ``index_dir`` has no ``index.json``: a build still running, an interrupted build, or no index at all."""
    from indexing.layout import LOCK_FILE
    from indexing.lock import owner_is_running, read_owner

    owner = read_owner(index_dir) if (index_dir / LOCK_FILE).exists() else None
    if owner is not None and owner_is_running(owner) is not False:
        return (f"{index_dir}: a build is still running into this folder (pid {owner.get('pid')} on "
                f"{owner.get('host')}); query it when it has finished")
    if (index_dir / MANIFEST_FILE).is_file():
        try:
            manifest = Manifest.load(index_dir)
        except ConfigError:
            manifest = None
        root = manifest.segments[-1].data_root if manifest is not None and manifest.segments else "DATA_DIR"
        return (f"{index_dir}: interrupted build: rerun the same command to finish "
                f"(engine index {root} --out {index_dir} ...)")
    return f"{index_dir}: not an index folder (no {INDEX_JSON}); build one with `engine index DATA_DIR --out {index_dir}`"


def check_index_folder(index_dir: Path) -> None:
    """Cheap checks (no faiss, no model) that ``index_dir`` holds a finished index; one line naming the problem."""
    index_dir = Path(index_dir)
    if not index_dir.exists():
        raise ConfigError(f"{index_dir}: index folder not found")
    if not index_dir.is_dir():
        raise ConfigError(f"{index_dir}: not a folder; expected an index folder built by `engine index`")
    if not (index_dir / INDEX_JSON).is_file():
        raise ConfigError(missing_index_message(index_dir))
    IndexConfig.load(index_dir)  # parses: a corrupt index.json is reported here too


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: unreadable JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return raw


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rs-retrieval-engine")
    except PackageNotFoundError:
        return "unknown"
