"""Finding and reading a dataset from a path, whatever its format, and locating the default dataset.

Order of detection for a folder: Karpathy JSON under a published name (``dataset_rsicd.json``,
``dataset_RSITMD.json``, ``dataset.json``), then PIR split files (``*_train.json`` ...), then any other JSON
whose content is either schema, then class sub-folders of images (AID), then images directly in the folder.
A path to a JSON file reads that file.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.data.common import list_image_files, read_json
from engine.data.folders import class_folders, read_image_folder, read_scene_folders
from engine.data.identify import match_manifest
from engine.data.karpathy import KARPATHY_FILE_NAMES, looks_like_karpathy, read_karpathy
from engine.data.model import Dataset
from engine.data.pir_json import dataset_prefix, find_pir_files, looks_like_pir, read_pir, split_of_file
from engine.data.problems import ProblemLog
from engine.errors import DataError

DATA_DIR_ENV = "ENGINE_DATA_DIR"
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_SHARED_DEFAULT = Path("..") / "shared" / "data" / "ucm_captions"


def _read_json_file(path: Path, log: ProblemLog) -> Dataset:
    document = read_json(path)
    if looks_like_karpathy(document):
        return read_karpathy(path, document, log)
    if looks_like_pir(document):
        # A split file stands for its dataset: read its train/val/test siblings too.
        same_dataset = [p for p in find_pir_files(path.parent) if dataset_prefix(p) == dataset_prefix(path)]
        return read_pir(same_dataset if split_of_file(path) else [path], log)
    raise DataError(
        f"{path}: unrecognised JSON schema; expected a Karpathy caption file (an object with an 'images' list) "
        "or PIR caption entries (a list of objects with 'image' and 'caption')"
    )


def _read_folder(folder: Path, log: ProblemLog) -> Dataset:
    for name in KARPATHY_FILE_NAMES:
        if (folder / name).is_file():
            return _read_json_file(folder / name, log)
    pir_files = [path for path in find_pir_files(folder) if looks_like_pir(read_json(path))]
    if pir_files:
        return read_pir(pir_files, log)
    other_json = sorted(folder.glob("*.json"))
    for path in other_json:
        document = read_json(path)
        if looks_like_karpathy(document) or looks_like_pir(document):
            return _read_json_file(path, log)
    if class_folders(folder):
        return read_scene_folders(folder, log)
    if list_image_files(folder):
        dataset = read_image_folder(folder, log)
        for path in other_json:
            log.warning("unrecognised-json", str(path), "not a Karpathy or PIR caption file; ignored")
        return dataset
    found = f" (found {', '.join(p.name for p in other_json[:3])}, none in a known schema)" if other_json else ""
    raise DataError(
        f"{folder}: no recognised annotation JSON{found} and no images; expected dataset_rsicd.json, "
        "dataset_RSITMD.json, dataset.json, *_train/_val/_test.json, class folders of images, or image files"
    )


def read_dataset(path: str | Path, log: ProblemLog) -> Dataset:
    """Read any supported layout, reporting problems to ``log`` (strict logs raise on the first error)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    dataset = _read_json_file(path, log) if path.is_file() else _read_folder(path, log)
    match = match_manifest(dataset)
    if match is not None:
        dataset.kind = match.manifest.name
    return dataset


UNREADABLE_IMAGE_CODES = frozenset({"missing-image", "empty-image"})


def load_dataset(path: str | Path, skip_unreadable: bool = False) -> Dataset:
    """The dataset at ``path`` (folder or annotation JSON), auto-detected; ``DataError`` on the first problem.

    Checks structure, ids, splits, captions and that every listed image file exists and is non-empty; pixel
    decoding is left to ``load_rgb`` at use time and to ``engine data check``. ``skip_unreadable`` (indexing:
    one bad file must not stop a million-image job) keeps missing and empty image files in the dataset; the
    indexer then skips and lists them like any other image it cannot decode.
    """
    log = ProblemLog(strict=True, tolerated=UNREADABLE_IMAGE_CODES if skip_unreadable else frozenset())
    return read_dataset(path, log)


def default_dataset_path() -> Path:
    """Where the engine looks when no dataset is given, first match wins.

    1. ``$ENGINE_DATA_DIR`` when set (it must exist: a wrong setting is an error, not a silent fallback);
    2. ``../shared/data/ucm_captions`` relative to the current directory, then relative to the repository;
    3. the small real UCM sample shipped inside the package (``engine/sample``).
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.exists():
            raise DataError(f"{DATA_DIR_ENV}={configured}: no such file or folder")
        return path.resolve()
    for base in (Path.cwd(), _REPO_ROOT):
        candidate = (base / _SHARED_DEFAULT).resolve()
        if candidate.is_dir():
            return candidate
    return SAMPLE_DIR
