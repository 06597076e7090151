"""Finding and reading a dataset from a path, whatever its format, and locating the default dataset.

Order of detection for a folder: Karpathy JSON under a published name (``dataset_rsicd.json``,
``dataset_RSITMD.json``, ``dataset.json``), then PIR split files (``*_train.json`` ...), then the precomp text
layout (``train_caps.txt`` + ``train_filename.txt`` ..., as RSICD and RSITMD are published with AMFMN), then any
other JSON whose content is either schema, then class sub-folders of images (AID), then images directly in the
folder. A path to a JSON file reads that file; a path to a precomp ``*_caps.txt``/``*_filename.txt`` reads its
folder.

A caption dataset with a train split and no val split (the precomp copies merge the published train and val)
gets a class-stratified val split carved out of train (``engine.data.splits.carve_val``): the published val size
when the dataset is identified and its train split is the published train + val (RSICD: 1,094 images), else 10 %.
The dataset's ``notes`` say so, and commands print that once.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.data.common import list_image_files, read_json
from engine.data.folders import class_folders, read_image_folder, read_scene_folders, read_single_image
from engine.data.images import IMAGE_SUFFIXES
from engine.data.identify import match_manifest
from engine.data.karpathy import KARPATHY_FILE_NAMES, looks_like_karpathy, read_karpathy
from engine.data.model import Dataset
from engine.data.pir_json import dataset_prefix, find_pir_files, looks_like_pir, read_pir, split_of_file
from engine.data.precomp import CAPTIONS_FILE, FILENAMES_FILE, looks_like_precomp, read_precomp
from engine.data.problems import ProblemLog
from engine.data.splits import carve_val, val_count
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


def _is_precomp_file(path: Path) -> bool:
    suffixes = (CAPTIONS_FILE.format(split=""), FILENAMES_FILE.format(split=""))  # "_caps.txt", "_filename.txt"
    return path.name.endswith(suffixes) and looks_like_precomp(path.parent)


def _read_folder(folder: Path, log: ProblemLog, images: Path | None = None) -> Dataset:
    for name in KARPATHY_FILE_NAMES:
        if (folder / name).is_file():
            return _read_json_file(folder / name, log)
    pir_files = [path for path in find_pir_files(folder) if looks_like_pir(read_json(path))]
    if pir_files:
        return read_pir(pir_files, log)
    if looks_like_precomp(folder):
        return read_precomp(folder, log, images)
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
        "dataset_RSITMD.json, dataset.json, *_train/_val/_test.json, train_caps.txt + train_filename.txt, "
        "class folders of images, or image files"
    )


def read_dataset(path: str | Path, log: ProblemLog, images: str | Path | None = None) -> Dataset:
    """Read any supported layout, reporting problems to ``log`` (strict logs raise on the first error).

    ``images`` (``--images DIR``) says where the image files of a precomp folder are."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    images = Path(images).expanduser() if images is not None else None
    if path.is_file() and _is_precomp_file(path):
        path = path.parent
    if images is not None and not (path.is_dir() and looks_like_precomp(path)):
        raise DataError(f"--images {images}: only a precomp folder (train_caps.txt + train_filename.txt ...) "
                        f"takes an image folder; {path} is not one")
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        dataset = read_single_image(path, log)  # e.g. one GeoTIFF scene
    else:
        dataset = _read_json_file(path, log) if path.is_file() else _read_folder(path, log, images)
    match = match_manifest(dataset)
    if match is not None:
        dataset.kind = match.manifest.name
    return _with_val_split(dataset, match.manifest if match else None, log)


def _with_val_split(dataset: Dataset, manifest, log: ProblemLog) -> Dataset:
    """A caption dataset with train but no val split gets one carved out of train (see the module notes)."""
    counts = dataset.split_counts()
    if not dataset.captions or "train" not in counts or "val" in counts or log.has_errors:
        return dataset
    published = manifest.split_counts if manifest is not None else None
    count = val_count(counts["train"], (published["train"], published["val"]) if published else None)
    if count < 1:
        return dataset  # a single train image: nothing to spare
    carved = carve_val(dataset, count)
    how = (f"{manifest.name}'s published val size" if published and count == published["val"]
           else "10 % of train")
    note = (f"{dataset.root}: no val split; {count:,} of the {counts['train']:,} train images form a "
            f"class-stratified val split ({how}; seeded, the same every run); train keeps "
            f"{counts['train'] - count:,}")
    log.info("val-carved", "splits", note.split(": ", 1)[1])
    carved.notes.append(note)
    return carved


UNREADABLE_IMAGE_CODES = frozenset({"missing-image", "empty-image"})


def load_dataset(path: str | Path, skip_unreadable: bool = False, images: str | Path | None = None) -> Dataset:
    """The dataset at ``path`` (folder or annotation JSON), auto-detected; ``DataError`` on the first problem.

    Checks structure, ids, splits, captions and that every listed image file exists and is non-empty; pixel
    decoding is left to ``load_rgb`` at use time and to ``engine data check``. ``skip_unreadable`` (indexing:
    one bad file must not stop a million-image job) keeps missing and empty image files in the dataset; the
    indexer then skips and lists them like any other image it cannot decode.
    """
    log = ProblemLog(strict=True, tolerated=UNREADABLE_IMAGE_CODES if skip_unreadable else frozenset())
    return read_dataset(path, log, images)


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
