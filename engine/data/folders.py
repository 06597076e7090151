"""Readers for image collections without captions: scene-class folders (AID) and plain image folders.

Scene folders look like ``<root>/<Class>/<class>_<n>.jpg``; the label is the folder name exactly as written
(``DenseResidential``), because that is how AID and NWPU-RESISC45 name their classes. Plain folders hold images
directly; their labels come from file names where possible (``airport_3.jpg``). Neither has captions or splits
(``split`` is ``None``): callers that need a split make their own, deterministically.

Ids are positions in a stable order: class folders sorted by name, files in natural order within each
(``2.jpg`` before ``10.jpg``), counting from 0.
"""

from __future__ import annotations

from pathlib import Path

from engine.data.common import check_image_files, is_folder, list_image_files
from engine.data.labels import label_from_filename
from engine.data.model import Dataset, ImageRecord
from engine.data.problems import ProblemLog
from engine.errors import DataError


def class_folders(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that directly contain at least one image, sorted by name."""
    try:
        entries = list(root.iterdir())
    except OSError as error:
        raise DataError(f"{root}: cannot list the folder ({error.strerror or error})") from None
    folders = [path for path in entries if not path.name.startswith(".") and is_folder(path)]
    return sorted((folder for folder in folders if list_image_files(folder)), key=lambda path: path.name)


def read_scene_folders(root: Path, log: ProblemLog) -> Dataset:
    """One image per file, labelled by its class folder."""
    root = root.resolve()
    folders = class_folders(root)
    if not folders:
        raise DataError(f"{root}: no sub-folders with images; expected <root>/<Class>/<image files>")
    images: list[ImageRecord] = []
    for folder in folders:
        for path in list_image_files(folder):
            images.append(ImageRecord(image_id=len(images), path=path, split=None, label=folder.name))
    check_image_files(images, log, "the folder listing")
    return Dataset(name=root.name, kind="scene_folders", root=root, images=images, captions=[], format="scene_folders")


def read_image_folder(root: Path, log: ProblemLog) -> Dataset:
    """Every image directly in ``root``; labels from file names, the rest listed as unlabelled."""
    root = root.resolve()
    files = list_image_files(root)
    if not files:
        raise DataError(f"{root}: no image files found")
    images: list[ImageRecord] = []
    unlabelled: list[str] = []
    for path in files:
        label = label_from_filename(path.name)
        images.append(ImageRecord(image_id=len(images), path=path, split=None, label=label))
        if label is None:
            unlabelled.append(path.name)
    check_image_files(images, log, "the folder listing")
    return Dataset(
        name=root.name, kind="images", root=root, images=images, captions=[], unlabelled=unlabelled, format="images"
    )


def read_single_image(path: Path, log: ProblemLog) -> Dataset:
    """One image file as a collection of one (a GeoTIFF scene given alone is chipped later by the indexer)."""
    path = path.resolve()
    images = [ImageRecord(image_id=0, path=path, split=None, label=label_from_filename(path.name))]
    check_image_files(images, log, "the command line")
    return Dataset(name=path.stem, kind="images", root=path.parent, images=images, captions=[], format="images")
