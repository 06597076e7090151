"""Reader for the "precomp" text layout in which RSICD and RSITMD are published with AMFMN, GaLR and PIR's code.

One pair of text files per split, next to each other:

- ``{split}_caps.txt``: one caption per line;
- ``{split}_filename.txt``: the image file name of each caption, either one line per caption (RSICD's and
  RSITMD's ``test_filename.txt``) or one line per image, whose captions are then the next ``k`` lines of the
  captions file (``train_filename.txt``: 9,828 names for 49,140 captions, ``k = 5``).

The published copies hold ``train`` (the Karpathy train and val splits merged) and ``test``; a ``val`` pair is
read when present. Images sit in ``RSICD_images/``, ``images/`` or the folder itself, or wherever ``--images DIR``
says. Image ids are positions in reading order (train, val, test; first appearance within a split), caption ids
positions in the same order. Scene classes come from file names (``airport_348.jpg``); RSICD's numeric files
(``00017.jpg``) have none. A merged train split is given a val split afterwards (``engine.data.val_split``).
"""

from __future__ import annotations

from pathlib import Path

from engine.data.common import check_caption_coverage, check_image_files, resolve_image_dir
from engine.data.labels import label_from_filename
from engine.data.model import SPLITS, Caption, Dataset, ImageRecord
from engine.data.problems import ProblemLog
from engine.errors import DataError

CAPTIONS_FILE = "{split}_caps.txt"
FILENAMES_FILE = "{split}_filename.txt"
IMAGE_DIR_NAMES = ("RSICD_images", "RSITMD_images", "images", "imgs", "Images")
_NAME_SUFFIX = "_precomp"  # AMFMN's folder names: rsicd_precomp, rsitmd_precomp


def precomp_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{split: (captions file, file-name file)}`` for the splits whose captions file exists in ``folder``."""
    found = {}
    for split in SPLITS:
        captions = folder / CAPTIONS_FILE.format(split=split)
        names = folder / FILENAMES_FILE.format(split=split)
        if captions.is_file() or names.is_file():
            found[split] = (captions, names)
    return found


def looks_like_precomp(folder: Path) -> bool:
    return folder.is_dir() and bool(precomp_files(folder))


def _read_lines(path: Path) -> list[str]:
    """The file's lines, right-stripped; trailing blank lines dropped (editors add them), inner ones kept."""
    if not path.is_file():
        raise DataError(f"{path}: not found; the precomp layout needs {CAPTIONS_FILE.format(split='<split>')} "
                        f"and {FILENAMES_FILE.format(split='<split>')} side by side")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start}); expected one line per entry") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DataError(f"{path}: file is empty; expected one line per entry")
    return lines


def caption_owners(names: list[str], captions: int, names_file: Path, captions_file: Path) -> list[str]:
    """The file name of every caption: the names file lists one per caption, or one per image with the same
    number ``k`` of captions each (caption ``i`` belongs to name ``i // k``)."""
    if len(names) == captions:
        return names
    if len(names) < captions and captions % len(names) == 0:
        per_image = captions // len(names)
        return [names[i // per_image] for i in range(captions)]
    raise DataError(f"{names_file}: {len(names):,} file names for the {captions:,} captions of {captions_file.name}; "
                    "expected one name per caption, or one per image with the same number of captions each")


def read_precomp(folder: Path, log: ProblemLog, images: Path | None = None) -> Dataset:
    """A ``Dataset`` from a precomp folder; ``images`` overrides where the image files are looked up."""
    root = folder.resolve()
    files = precomp_files(root)
    if not files:
        raise DataError(f"{root}: no {CAPTIONS_FILE.format(split='<split>')} file; not a precomp folder")
    entries: list[tuple[str, str]] = []  # (file name, split) in id order
    split_of: dict[str, str] = {}
    texts: list[tuple[str, str]] = []  # (file name, caption)
    for split, (captions_file, names_file) in files.items():
        captions = _read_lines(captions_file)
        names = [name.strip() for name in _read_lines(names_file)]
        for position, name in enumerate(names):
            if not name:
                raise DataError(f"{names_file}: line {position + 1} is empty; expected an image file name")
        owners = caption_owners(names, len(captions), names_file, captions_file)
        for line, (name, text) in enumerate(zip(owners, captions), start=1):
            if name not in split_of:
                split_of[name] = split
                entries.append((name, split))
            elif split_of[name] != split:
                log.error("split-overlap", f"{names_file}: line {line}",
                          f"{name} is also listed in the {split_of[name]} split")
                continue
            text = text.strip()
            if not text:
                log.error("empty-caption", f"{captions_file}: line {line}", f"caption of {name} is empty")
                continue
            texts.append((name, text))
    image_dir = Path(images).expanduser().resolve() if images is not None else \
        resolve_image_dir(root, IMAGE_DIR_NAMES, (name for name, _ in entries))
    if images is not None and not image_dir.is_dir():
        raise DataError(f"--images {images}: no such folder")
    image_id = {name: position for position, (name, _) in enumerate(entries)}
    records, unlabelled = [], []
    for name, split in entries:
        label = label_from_filename(name)
        record = ImageRecord(image_id=image_id[name], path=image_dir / name, split=split, label=label)
        records.append(record)
        if label is None:
            unlabelled.append(record.relative_path(root))
    captions_list = [Caption(caption_id=position, image_id=image_id[name], text=text)
                     for position, (name, text) in enumerate(texts)]
    first_file = next(iter(files.values()))[0].name
    check_image_files(records, log, first_file)
    check_caption_coverage(records, captions_list, log, first_file)
    name = root.name.removesuffix(_NAME_SUFFIX) or root.name
    return Dataset(name=name, kind="precomp", root=root, images=records, captions=captions_list,
                   annotation_file=None, unlabelled=unlabelled, format="precomp")
