"""Training on a mix of datasets: caption datasets (Karpathy/PIR JSON) and scene collections (``<Class>/<image>``)
in one run, each with a sampling weight, one global list of scene classes, and no evaluation image trained on.

What a mix is (``engine train DATA [DATA ...] [--weights ...]`` or a mix file, docs/training-mix.md):
- a *caption dataset* trains on its ``train`` split; the first caption dataset with a ``val`` split is the
  *primary*: one epoch is one pass over its training pairs. Every caption dataset with a ``val`` split is scored
  after each epoch, and the mean of their val mR chooses the epoch (RSICD + UCM: both count equally).
- a *scene collection* has no split and no captions: the fixed stratified split of ``engine.data.splits`` holds
  out the same images that ``engine train-instruction`` holds out (AID: 2,000 of 10,000), and each training
  image gets ``captions_per_image`` captions from its class name (``engine.data.scene_captions``).
- scene classes are merged across datasets by spelling (``engine.data.scene_names.class_key``: ``Beach`` in AID
  and ``beach`` in UCM are one class, and the log says so); a ``rename`` map in the mix file renames a
  dataset's classes first, to keep two same-spelled classes apart or to join two that mean the same.
- no image of any dataset's evaluation part (val, test, held-out) is trained on: training images whose file
  bytes equal an evaluation image's are left out, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from engine.data.model import Caption, Dataset, ImageRecord
from engine.data.scene_captions import DEFAULT_CAPTION_SEED, DEFAULT_CAPTIONS_PER_IMAGE, scene_captions
from engine.data.scene_names import class_key
from engine.data.splits import DEFAULT_SPLIT_SEED, DEFAULT_TRAIN_FRACTION, is_unsplit, stratified_split
from engine.errors import ConfigError, DataError

CAPTIONS = "captions"
SCENES = "scenes"
MIX_FILE_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class MixEntry:
    """One dataset of a mix, as the user wrote it (paths as given; relative to the mix file when from one)."""

    path: str
    weight: float = 1.0  # share of the training samples of an epoch = weight / sum of weights
    captions_per_image: int = DEFAULT_CAPTIONS_PER_IMAGE  # scene collections: captions drawn per image
    caption_seed: int = DEFAULT_CAPTION_SEED  # scene collections: which captions are drawn
    train_fraction: float = DEFAULT_TRAIN_FRACTION  # scene collections: the fixed held-out split
    split_seed: int = DEFAULT_SPLIT_SEED
    views: int | None = None  # cached dihedral views of its training images (default: --cached-views)
    rename: dict[str, str] = field(default_factory=dict)  # class name -> new class name, before merging
    images: str | None = None  # precomp caption datasets: the image folder (``--images``), relative like path

    def validate(self, where: str) -> None:
        checks = [
            (self.weight > 0, f"weight must be > 0, got {self.weight}"),
            (self.captions_per_image >= 1, f"captions_per_image must be >= 1, got {self.captions_per_image}"),
            (0 < self.train_fraction < 1, f"train_fraction must be in (0, 1), got {self.train_fraction}"),
            (self.views is None or self.views >= 1, f"views must be >= 1, got {self.views}"),
            (all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in self.rename.items()),
             "rename must map class names to non-empty class names"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{where}: {message}")


@dataclass(frozen=True)
class MixSpec:
    """The datasets of a run and how an epoch is drawn from them; saved in ``train_config.json`` as ``mix``."""

    datasets: tuple[MixEntry, ...]
    epoch_pairs: int | None = None  # training pairs per epoch (default: one pass over the primary's pairs)

    def to_dict(self) -> dict:
        return {"datasets": [dataclasses.asdict(entry) for entry in self.datasets], "epoch_pairs": self.epoch_pairs}

    @classmethod
    def from_dict(cls, raw: object, source: str, base: Path | None = None) -> "MixSpec":
        """Parse a mix document; ``base`` resolves relative dataset paths (the mix file's folder)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("datasets"), list) or not raw["datasets"]:
            raise ConfigError(f"{source}: a mix needs a non-empty 'datasets' list "
                              "(e.g. {\"datasets\": [{\"path\": \"ucm\"}, {\"path\": \"aid\", \"weight\": 0.5}]})")
        unknown = sorted(set(raw) - {"datasets", "epoch_pairs"})
        if unknown:
            raise ConfigError(f"{source}: unknown mix fields {unknown}; expected datasets, epoch_pairs")
        known = {item.name for item in dataclasses.fields(MixEntry)}
        entries = []
        for position, item in enumerate(raw["datasets"]):
            where = f"{source}: datasets[{position}]"
            if isinstance(item, str):
                item = {"path": item}
            if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                raise ConfigError(f"{where}: expected a path string or an object with a 'path'")
            extra = sorted(set(item) - known)
            if extra:
                raise ConfigError(f"{where}: unknown fields {extra}; expected some of {sorted(known)}")
            values = dict(item)
            for key in ("path", "images"):
                if base is not None and isinstance(values.get(key), str) and \
                        not Path(values[key]).expanduser().is_absolute():
                    values[key] = str(base / values[key])
            values["rename"] = dict(values.get("rename") or {})
            try:
                entry = MixEntry(**values)
            except TypeError as error:
                raise ConfigError(f"{where}: {error}") from None
            _check_types(entry, where)
            entry.validate(where)
            entries.append(entry)
        epoch_pairs = raw.get("epoch_pairs")
        if epoch_pairs is not None and (not isinstance(epoch_pairs, int) or epoch_pairs < 1):
            raise ConfigError(f"{source}: epoch_pairs must be a positive integer, got {epoch_pairs!r}")
        spec = cls(tuple(entries), epoch_pairs)
        seen: dict[str, int] = {}
        for position, entry in enumerate(spec.datasets):
            resolved = str(Path(entry.path).expanduser().resolve())
            if resolved in seen:
                raise ConfigError(f"{source}: datasets[{position}] repeats datasets[{seen[resolved]}] "
                                  f"({entry.path}); list each dataset once and set its weight")
            seen[resolved] = position
        return spec


def _check_types(entry: MixEntry, where: str) -> None:
    numeric = {"weight": (int, float), "captions_per_image": (int,), "caption_seed": (int,),
               "train_fraction": (int, float), "split_seed": (int,), "views": (int, type(None))}
    for name, types in numeric.items():
        value = getattr(entry, name)
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    if entry.images is not None and not isinstance(entry.images, str):
        raise ConfigError(f"{where}: images must be a folder path, got {entry.images!r}")


def is_mix_file(path: Path) -> bool:
    """A JSON/YAML file whose top level is an object with ``datasets`` (a Karpathy file has ``images``)."""
    if not path.is_file() or path.suffix.lower() not in MIX_FILE_SUFFIXES:
        return False
    try:
        raw = _parse_file(path)
    except ConfigError:
        return path.suffix.lower() != ".json"  # a broken YAML file can only be meant as a mix file
    return isinstance(raw, dict) and "datasets" in raw


def _parse_file(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: "
                              f"{error.msg}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: malformed YAML{at}: {getattr(error, 'problem', error)}") from None


def read_mix_file(path: Path) -> MixSpec:
    return MixSpec.from_dict(_parse_file(path), str(path), base=path.resolve().parent)


def mix_from_arguments(paths: list[Path], weights: list[float] | None,
                       images: Path | None = None) -> MixSpec | None:
    """The mix that ``engine train DATA [DATA ...] [--weights w1,w2,...]`` names; ``None`` for one plain dataset
    without weights (the single-dataset path, unchanged). ``images`` (``--images``) goes with a single DATA."""
    if images is not None and (len(paths) != 1 or is_mix_file(paths[0])):
        raise ConfigError("--images: give it with a single DATA; in a mix, set each precomp dataset's 'images' "
                          "in a mix file")
    if len(paths) == 1 and is_mix_file(paths[0]):
        if weights:
            raise ConfigError(f"--weights: {paths[0]} is a mix file; set each dataset's weight in it")
        return read_mix_file(paths[0])
    for path in paths:
        if is_mix_file(path):
            raise ConfigError(f"{path}: a mix file must be the only DATA argument")
    if weights is not None and len(weights) != len(paths):
        raise ConfigError(f"--weights: {len(weights)} weights for {len(paths)} datasets; give one per DATA")
    if len(paths) == 1 and weights is None:
        return None
    entries = tuple(MixEntry(path=str(path), weight=weight, images=str(images) if images else None)
                    for path, weight in zip(paths, weights or [1.0] * len(paths)))
    raw = {"datasets": [dataclasses.asdict(entry) for entry in entries]}
    return MixSpec.from_dict(raw, "engine train DATA")


@dataclass
class MixSource:
    """One dataset of a loaded mix: its training part with global class names and (scenes) generated captions."""

    entry: MixEntry
    name: str  # short, unique within the mix (for logs and tables)
    kind: str  # CAPTIONS or SCENES
    dataset: Dataset
    train: Dataset  # the images and captions trained on; labels are global class names
    train_positions: list[int]  # positions in ``dataset.images`` of the training images (cache keys)
    evaluation: list[ImageRecord]  # images held out from training (val/test splits or the held-out part)
    renamed: dict[str, str] = field(default_factory=dict)  # dataset label -> label after the entry's rename
    # scene collections: the whole train part of the stratified split, before near-duplicates of evaluation images
    # are left out: the images `engine train-instruction` caches trunk maps for (a mix reads that file, then rows)
    split_train_positions: list[int] = field(default_factory=list)

    @property
    def views(self) -> int | None:
        return self.entry.views


@dataclass
class Mix:
    spec: MixSpec
    sources: list[MixSource]
    class_names: list[str]  # global class names; a pair's class id indexes this list
    primary: int  # the source whose val split selects the epoch
    notes: list[str]  # what the log should say (merged classes, skipped folders, excluded images)

    @property
    def primary_source(self) -> MixSource:
        return self.sources[self.primary]

    @property
    def val_sources(self) -> list[MixSource]:
        """The caption datasets with a val split: the mean of their val mR chooses the epoch."""
        return [source for source in self.sources if source.kind == CAPTIONS and source.dataset.split("val").captions]

    def trained_on(self) -> list[dict]:
        """Each dataset's identity and the part of it trained on (recorded in checkpoints)."""
        return [{**source.dataset.identity(), "trained_images": len(source.train.images),
                 "part": "train split" if source.kind == CAPTIONS else
                 f"train part of the stratified split ({source.entry.train_fraction:g}, seed {source.entry.split_seed})"}
                for source in self.sources]

    def describe(self) -> dict:
        """What ``mix.json`` of a run records: the resolved datasets and the global class table."""
        return {"spec": self.spec.to_dict(), "primary": self.sources[self.primary].name,
                "val": [source.name for source in self.val_sources],
                "sources": [{"name": s.name, "kind": s.kind, "root": str(s.dataset.root), "weight": s.entry.weight,
                             "train_images": len(s.train.images), "train_captions": len(s.train.captions),
                             "held_out_images": len(s.evaluation)} for s in self.sources],
                "classes": self.class_names, "notes": self.notes}


def load_mix(spec: MixSpec, use_affiliation: bool) -> Mix:
    """Read every dataset of ``spec``, check it, and build the training parts; one ``EngineError`` on bad input."""
    from engine.data import load_dataset

    notes: list[str] = []
    loaded: list[tuple[MixEntry, Dataset, str]] = []
    for position, entry in enumerate(spec.datasets):
        path = Path(entry.path).expanduser()
        if not path.exists():
            raise DataError(f"mix datasets[{position}]: {entry.path}: no such file or folder")
        dataset = load_dataset(path, images=entry.images)
        notes += dataset.notes
        kind = SCENES if is_unsplit(dataset) else CAPTIONS
        if kind == SCENES:
            _check_scene_collection(dataset, notes)
        elif entry.rename and not dataset.has_labels:
            raise ConfigError(f"{dataset.root}: rename given, but this dataset has no scene classes")
        loaded.append((entry, dataset, kind))
    names = _unique_names([dataset for _, dataset, _ in loaded])
    primary = next((i for i, (_, d, kind) in enumerate(loaded) if kind == CAPTIONS and d.split("val").captions), None)
    if primary is None:
        raise DataError("mix: no caption dataset with a val split; the epoch is chosen on val, so the mix needs "
                        "one (e.g. ../shared/data/ucm_captions)")
    renamed = [_renames(entry, dataset) for entry, dataset, _ in loaded]
    class_names, merged = _global_classes([(name, dataset, rename) for name, (_, dataset, _), rename
                                           in zip(names, loaded, renamed)])
    notes += merged
    sources = []
    for (entry, dataset, kind), name, rename in zip(loaded, names, renamed):
        if kind == SCENES:
            source = _scene_source(entry, name, dataset, rename, class_names)
        else:
            source = _caption_source(entry, name, dataset, rename, class_names, use_affiliation)
        sources.append(source)
    notes += _exclude_evaluation_copies(sources)
    for source in sources:
        missing = sum(image.label is None for image in source.train.images)
        if missing and use_affiliation:
            notes.append(f"{source.name}: {missing:,} of {len(source.train.images):,} training images have no scene "
                         "class; the affiliation loss leaves them out (the contrastive loss uses them)")
    for source in sources:
        if not source.train.captions:
            raise DataError(f"{source.dataset.root}: no training image with a caption is left in this dataset")
    return Mix(spec, sources, class_names, primary, notes)


def _check_scene_collection(dataset: Dataset, notes: list[str]) -> None:
    from engine.data.common import list_image_files

    root = dataset.root
    if dataset.format != "scene_folders" or not dataset.has_labels:
        unlabelled = len(dataset.unlabelled) or sum(image.label is None for image in dataset.images)
        raise DataError(f"{root}: {unlabelled} images have no scene class; a scene collection in a mix needs "
                        "<root>/<Class>/<image> folders (or a caption file with a train/val/test split)")
    empty = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                   and not list_image_files(p))
    if empty:
        notes.append(f"warning: {root}: class folder(s) with no images skipped: {', '.join(empty)}")
    if len(dataset.classes) < 2:
        raise DataError(f"{root}: only one class ({dataset.classes[0]}); a scene collection in a mix needs at "
                        "least 2 classes (captions from one class name say nothing that tells images apart)")


def _unique_names(datasets: list[Dataset]) -> list[str]:
    names: list[str] = []
    for dataset in datasets:
        base = dataset.root.name or "dataset"
        name, counter = base, 2
        while name in names:
            name, counter = f"{base}-{counter}", counter + 1
        names.append(name)
    return names


def _renames(entry: MixEntry, dataset: Dataset) -> dict[str, str]:
    """Dataset label -> label after the entry's ``rename`` (matched by class key); unknown names are an error."""
    by_key = {class_key(label): label for label in dataset.classes}
    renamed = {label: label for label in dataset.classes}
    for old, new in entry.rename.items():
        label = by_key.get(class_key(old))
        if label is None:
            raise ConfigError(f"{entry.path}: rename {old!r}: no such class; the classes are "
                              f"{', '.join(dataset.classes)}")
        renamed[label] = new.strip()
    return renamed


def _global_classes(named: list[tuple[str, Dataset, dict[str, str]]]) -> tuple[list[str], list[str]]:
    """One global class per spelling key, named by its first spelling; notes for merges across datasets."""
    first_spelling: dict[str, str] = {}
    members: dict[str, list[tuple[str, str]]] = {}
    for name, dataset, rename in named:
        for label in dataset.classes:
            new = rename[label]
            key = class_key(new)
            if not key:
                raise DataError(f"{dataset.root}: class {new!r} has no letters or digits")
            first_spelling.setdefault(key, new)
            shown = f"{name} {label!r}" + (f" (renamed {new!r})" if new != label else "")
            members.setdefault(key, []).append((name, shown))
    notes = [f"class {first_spelling[key]!r} is one class across datasets (same spelling): "
             + " + ".join(shown for _, shown in who)
             for key, who in members.items() if len({source for source, _ in who}) > 1]
    if notes:
        notes.append("classes with the same spelling are merged; to keep two apart, give one a 'rename' in a mix file")
    return list(first_spelling.values()), notes


def _relabel(image: ImageRecord, rename: dict[str, str], class_names: list[str], split: str) -> ImageRecord:
    by_key = {class_key(name): name for name in class_names}
    label = by_key[class_key(rename[image.label])] if image.label is not None else None
    return dataclasses.replace(image, label=label, split=split)


def relabelled_split(source: MixSource, split: str, class_names: list[str]) -> Dataset:
    """One split of a caption dataset of the mix, its labels spelt as the global class names."""
    part = source.dataset.split(split)
    images = [_relabel(image, source.renamed, class_names, split) for image in part.images]
    return dataclasses.replace(part, images=images)


def _caption_source(entry: MixEntry, name: str, dataset: Dataset, rename: dict[str, str], class_names: list[str],
                    use_affiliation: bool) -> MixSource:
    part = dataset.split("train")
    if not part.captions:
        raise DataError(f"{dataset.annotation_file or dataset.root}: no captioned image in the train split "
                        f"(splits present: {dataset.split_counts()})")
    if use_affiliation and all(image.label is None for image in part.images):
        raise DataError(f"{dataset.annotation_file or dataset.root}: none of the {len(part.images)} training "
                        "images has a scene class, which the affiliation loss needs; train with "
                        "--no-affiliation or leave this dataset out of the mix")
    positions = {image.image_id: p for p, image in enumerate(dataset.images)}
    images = [_relabel(image, rename, class_names, "train") for image in part.images]
    evaluation = [image for image in dataset.images if image.split != "train"]
    train = dataclasses.replace(part, images=images)
    return MixSource(entry, name, CAPTIONS, dataset, train, [positions[i.image_id] for i in images], evaluation,
                     rename)


def _scene_source(entry: MixEntry, name: str, dataset: Dataset, rename: dict[str, str],
                  class_names: list[str]) -> MixSource:
    train_positions, held_out = stratified_split(dataset, entry.train_fraction, entry.split_seed)
    images, captions = [], []
    for position in train_positions:
        image = _relabel(dataset.images[position], rename, class_names, "train")
        images.append(image)
        for text in scene_captions(image.label, image.relative_path(dataset.root), entry.captions_per_image,
                                   entry.caption_seed):
            captions.append(Caption(len(captions), image.image_id, text))
    train = Dataset(name=f"{dataset.name}:train", kind=dataset.kind, root=dataset.root, images=images,
                    captions=captions, format=dataset.format)
    return MixSource(entry, name, SCENES, dataset, train, train_positions, [dataset.images[p] for p in held_out],
                     rename, list(train_positions))


def _exclude_evaluation_copies(sources: list[MixSource]) -> list[str]:
    """Drop training images that are near-duplicates (``engine.data.near_duplicates``: resized, re-encoded or
    byte-identical copies) of any source's evaluation image (val, test, held-out); returns what was dropped,
    per dataset and per evaluation set it copied."""
    from engine.data.near_duplicates import duplicate_of, fingerprints

    owners = [(source.name, image.split or "held-out") for source in sources for image in source.evaluation]
    references = fingerprints([image.path for source in sources for image in source.evaluation])
    notes = []
    for source in sources:
        matches = duplicate_of(fingerprints([image.path for image in source.train.images]), references)
        keep = [(image, position) for image, position, match
                in zip(source.train.images, source.train_positions, matches) if match < 0]
        dropped = len(source.train.images) - len(keep)
        if not dropped:
            continue
        copied = Counter(owners[match] for match in matches if match >= 0)
        kept_ids = {image.image_id for image, _ in keep}
        source.train = dataclasses.replace(
            source.train, images=[image for image, _ in keep],
            captions=[caption for caption in source.train.captions if caption.image_id in kept_ids])
        source.train_positions = [position for _, position in keep]
        where = ", ".join(f"{name} {split}: {count}" for (name, split), count in sorted(copied.items()))
        notes.append(f"warning: {source.name}: {dropped} training images are near-duplicates of evaluation images "
                     f"({where}); left out of training")
    return notes
