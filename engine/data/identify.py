"""Which public dataset a loaded folder holds: evidence from file names, the JSON's own name, counts and classes.

``dataset.json`` is shared by UCM-captions and Sydney-captions, and AID shares RSICD's class names, so no single
clue decides; each manifest collects weighted evidence and the best one wins if it has enough. A subset (the
embedded sample) still matches through its class list and is then checked with count warnings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from data_manifests import Manifest, all_manifests
from engine.data.model import Dataset

# Evidence weights: a file name only one dataset uses, or the JSON naming itself, is decisive on its own;
# a class list that mostly agrees is strong; an equal image count alone is weak.
_UNIQUE_ANNOTATION_NAME = 3.0
_DATASET_NAME = 3.0
_CLASS_AGREEMENT = 2.0
_IMAGE_COUNT = 1.0
_SHARED_ANNOTATION_NAME = 0.5
_MIN_CLASS_AGREEMENT = 0.6
_MIN_SCORE = 1.5


@dataclass(frozen=True)
class ManifestMatch:
    manifest: Manifest
    score: float
    evidence: tuple[str, ...]


def normalise_class(name: str) -> str:
    """``DenseResidential`` and ``dense_residential`` compare equal to ``denseresidential``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def class_agreement(observed: list[str], expected: tuple[str, ...]) -> float:
    """Jaccard overlap of normalised class names (0 when either side is empty)."""
    seen, known = {normalise_class(c) for c in observed}, {normalise_class(c) for c in expected}
    if not seen or not known:
        return 0.0
    return len(seen & known) / len(seen | known)


def _compatible(dataset: Dataset, manifest: Manifest) -> bool:
    if manifest.task == "scene_classification":
        return dataset.format == "scene_folders"
    return bool(dataset.captions) or dataset.format in ("karpathy", "pir")


def _score(dataset: Dataset, manifest: Manifest, annotation_owners: dict[str, int]) -> ManifestMatch:
    evidence: list[str] = []
    score = 0.0
    annotation = dataset.annotation_file.name if dataset.annotation_file else None
    if annotation in manifest.annotation_files:
        unique = annotation_owners.get(annotation, 0) == 1
        score += _UNIQUE_ANNOTATION_NAME if unique else _SHARED_ANNOTATION_NAME
        evidence.append(f"annotation file {annotation}")
    if normalise_class(dataset.name) in {normalise_class(manifest.name), normalise_class(manifest.title)}:
        score += _DATASET_NAME
        evidence.append(f"dataset name {dataset.name!r}")
    agreement = class_agreement(dataset.classes, manifest.classes)
    if agreement >= _MIN_CLASS_AGREEMENT:
        score += _CLASS_AGREEMENT * agreement
        evidence.append(f"classes agree {agreement:.0%}")
    if len(dataset.images) == manifest.image_count:
        score += _IMAGE_COUNT
        evidence.append(f"{manifest.image_count} images")
    return ManifestMatch(manifest, score, tuple(evidence))


def match_manifest(dataset: Dataset, manifests: list[Manifest] | None = None) -> ManifestMatch | None:
    """The best-supported manifest for ``dataset``, or ``None`` when nothing fits well enough."""
    manifests = all_manifests() if manifests is None else manifests
    owners: dict[str, int] = {}
    for manifest in manifests:
        for annotation in manifest.annotation_files:
            owners[annotation] = owners.get(annotation, 0) + 1
    candidates = [_score(dataset, m, owners) for m in manifests if _compatible(dataset, m)]
    candidates = [match for match in candidates if match.score >= _MIN_SCORE]
    return max(candidates, key=lambda match: match.score, default=None)
