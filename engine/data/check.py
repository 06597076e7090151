"""``engine data check``: everything that can be wrong with a dataset folder, found in one pass.

The reader runs in collecting mode (all structural problems, not just the first), every listed image is probed
(fully decoded by default, so truncated files are caught) on a thread pool, and the result is compared with the
manifest of the dataset the folder was identified as. Errors make the dataset unusable; deviations from the
manifest that training and evaluation survive (a subset, a different split convention, resized images) are
warnings.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_manifests import Manifest
from engine.data.common import is_image_file
from engine.data.detect import read_dataset
from engine.data.identify import ManifestMatch, class_agreement, match_manifest, normalise_class
from engine.data.images import ImageProbe, probe_image
from engine.data.model import Dataset
from engine.data.problems import Problem, ProblemLog

EXAMPLES_PER_LINE = 3  # how many file names an aggregated finding quotes
_MAX_WORKERS = 8


@dataclass
class CheckReport:
    """The outcome of checking one dataset path; ``as_dict`` is the ``--json`` output."""

    path: Path
    dataset: Dataset
    match: ManifestMatch | None
    problems: list[Problem]
    modes: Counter[str] = field(default_factory=Counter)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    decoded: bool = True
    seconds: float = 0.0

    @property
    def manifest(self) -> Manifest | None:
        return self.match.manifest if self.match else None

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == "warning"]

    @property
    def usable(self) -> bool:
        return not self.errors and bool(self.dataset.images)

    def captions_per_image(self) -> Counter[int]:
        return Counter(len(captions) for captions in self.dataset.captions_by_image().values())

    def as_dict(self) -> dict[str, Any]:
        dataset, manifest = self.dataset, self.manifest
        return {
            "path": str(self.path),
            "usable": self.usable,
            "format": dataset.format,
            "dataset": manifest.name if manifest else None,
            "evidence": list(self.match.evidence) if self.match else [],
            "annotation_file": str(dataset.annotation_file) if dataset.annotation_file else None,
            "images": len(dataset.images),
            "captions": len(dataset.captions),
            "splits": dataset.split_counts(),
            "caption_splits": dataset.caption_split_counts(),
            "captions_per_image": {str(k): v for k, v in sorted(self.captions_per_image().items())},
            "classes": len(dataset.classes),
            "class_names": dataset.classes,
            "unlabelled": len(dataset.unlabelled),
            "image_modes": dict(self.modes),
            "image_sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common()},
            "full_decode": self.decoded,
            "seconds": round(self.seconds, 3),
            "errors": [problem.as_dict() for problem in self.errors],
            "warnings": [problem.as_dict() for problem in self.warnings],
            "notes": [problem.as_dict() for problem in self.problems if problem.severity == "info"],
        }


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:EXAMPLES_PER_LINE])
    return f"{shown}, ..." if len(names) > EXAMPLES_PER_LINE else shown


def _probe_all(dataset: Dataset, log: ProblemLog, full_decode: bool, workers: int) -> list[ImageProbe]:
    """Probe the images whose files exist (missing/empty ones were reported by the reader)."""
    flagged = {problem.where for problem in log.problems if problem.code in ("missing-image", "empty-image")}
    paths = [image.path for image in dataset.images if str(image.path) not in flagged]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        probes = list(pool.map(lambda path: probe_image(path, full_decode), paths, chunksize=32))
    for probe in probes:
        if not probe.ok:
            log.error("corrupt-image", str(probe.path), probe.problem or "unreadable")
    return [probe for probe in probes if probe.ok]


def _check_images(report: CheckReport, probes: list[ImageProbe], log: ProblemLog) -> None:
    report.modes.update(probe.mode for probe in probes)
    report.sizes.update((probe.width, probe.height) for probe in probes)
    converted = Counter(probe.mode for probe in probes if probe.needs_conversion)
    if converted:
        modes = ", ".join(f"{mode}: {count}" for mode, count in converted.most_common())
        log.info("converted", "images", f"{sum(converted.values())} non-RGB images are converted on load ({modes})")
    manifest = report.manifest
    if manifest is None or not probes:
        return
    other = [probe for probe in probes if (probe.width, probe.height) != manifest.image_size]
    if other:
        seen = ", ".join(f"{w}x{h}: {n}" for (w, h), n in Counter((p.width, p.height) for p in other).most_common(4))
        log.warning(
            "image-size",
            "images",
            f"{len(other)} images differ from {manifest.name}'s {manifest.image_size[0]}x{manifest.image_size[1]} "
            f"({seen}); they are resized on load ({manifest.image_size_note})",
        )


def _check_extra_files(dataset: Dataset, log: ProblemLog) -> None:
    """Image files next to the listed ones that no annotation mentions (often a partial copy or a mix-up)."""
    if dataset.format not in ("karpathy", "pir", "precomp"):
        return
    listed = {image.path for image in dataset.images}
    folders = {path.parent for path in listed if path.parent.is_dir()}
    extra = sorted(p.name for folder in folders for p in folder.iterdir() if is_image_file(p) and p not in listed)
    if extra:
        log.warning(
            "extra-images", "images", f"{len(extra)} image files are not in the annotations: {_examples(extra)}"
        )


def _check_against_manifest(report: CheckReport, log: ProblemLog) -> None:
    dataset, manifest = report.dataset, report.manifest
    if manifest is None:
        return
    name = manifest.name
    if len(dataset.images) != manifest.image_count:
        log.warning("image-count", "images", f"{len(dataset.images)} images; {name} has {manifest.image_count}")
    if manifest.captions_per_image:
        if len(dataset.captions) != manifest.caption_count:
            log.warning("caption-count", "captions", f"{len(dataset.captions)}; {name} has {manifest.caption_count}")
        grouped = dataset.captions_by_image()
        expected = manifest.captions_per_image
        odd = [dataset.image(i).path.name for i, caps in grouped.items() if caps and len(caps) != expected]
        if odd:
            log.warning(
                "captions-per-image",
                "captions",
                f"{len(odd)} images do not have {manifest.captions_per_image} captions: {_examples(odd)}",
            )
    _check_splits(dataset, manifest, log)
    _check_classes(dataset, manifest, log)


def _check_splits(dataset: Dataset, manifest: Manifest, log: ProblemLog) -> None:
    if manifest.splits is None:
        return
    observed = {split: count for split, count in dataset.split_counts().items() if split != "none"}
    if observed == manifest.splits.as_dict():
        return
    for label, counts in manifest.alternative_splits:
        if observed == counts.as_dict():
            log.info("split-convention", "splits", f"the {label} split convention of {manifest.name}")
            return
    expected = "/".join(str(count) for count in manifest.splits.as_dict().values())
    found = "/".join(str(observed.get(split, 0)) for split in manifest.splits.as_dict())
    log.warning("split-sizes", "splits", f"train/val/test {found}; {manifest.name}'s published split is {expected}")


def _check_classes(dataset: Dataset, manifest: Manifest, log: ProblemLog) -> None:
    classes = dataset.classes
    if not classes:
        return
    known = {normalise_class(name) for name in manifest.classes}
    unknown = [name for name in classes if normalise_class(name) not in known]
    complete = len(manifest.classes) == manifest.class_count
    if unknown and complete:
        log.warning("unknown-classes", "classes", f"not among {manifest.name}'s classes: {_examples(unknown)}")
    if len(classes) != manifest.class_count and class_agreement(classes, manifest.classes) < 1.0:
        log.warning("class-count", "classes", f"{len(classes)} classes; {manifest.name} has {manifest.class_count}")


def check_dataset(path: str | Path, full_decode: bool = True, workers: int | None = None,
                  images: str | Path | None = None) -> CheckReport:
    """Check the dataset at ``path``; unreadable structure still raises ``DataError`` (one line, exit 2).

    ``images``: where a precomp folder's image files are (``--images DIR``)."""
    started = time.perf_counter()
    log = ProblemLog(strict=False)
    dataset = read_dataset(path, log, images)
    report = CheckReport(path=Path(path), dataset=dataset, match=match_manifest(dataset), problems=[])
    workers = workers or min(_MAX_WORKERS, (os.cpu_count() or 1) + 1)
    probes = _probe_all(dataset, log, full_decode, workers)
    report.decoded = full_decode
    _check_images(report, probes, log)
    _check_extra_files(dataset, log)
    _check_against_manifest(report, log)
    if dataset.unlabelled:
        log.warning(
            "unlabelled",
            "labels",
            f"{len(dataset.unlabelled)} images have no scene class (no 'class' field, no <class>_<n> file name): "
            f"{_examples(dataset.unlabelled)}",
        )
    if not dataset.images:
        log.error("no-images", str(path), "no usable images")
    report.problems = log.problems
    report.seconds = time.perf_counter() - started
    return report
