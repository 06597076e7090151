"""Evaluation results as self-describing JSON files, and side-by-side comparison (table + Recall@K plot)."""

from __future__ import annotations

import base64
import binascii
import json
import subprocess
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.atomic import write_text_atomic
from engine.errors import DataError

RESULT_FORMAT = "engine-eval/1"
RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")


@dataclass
class EvalResult:
    """Everything needed to trust and reproduce one evaluation run."""

    dataset: dict
    model: dict
    search: dict
    recalls: dict[str, float]
    recalls_pessimistic: dict[str, float] = field(default_factory=dict)
    # percentile image-bootstrap intervals of ``recalls`` (engine.metrics.recall_intervals); empty when not drawn
    recalls_interval: dict = field(default_factory=dict)
    # the ranks behind ``recalls`` (encode_ranks), so that --compare can pair two models on the same images
    ranks: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    git_commit: str = "unknown"
    created: str = ""
    seconds: float = 0.0
    ties: str = ("recalls: equal scores keep split order (stable sort); recalls_pessimistic: every "
                 "non-matching item with an equal score ranks above the match")
    format: str = RESULT_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def git_commit(start: Path | None = None) -> str:
    """The source tree's commit (with ``-dirty`` when it has uncommitted changes), or ``unknown``."""
    where = str(start or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def write_result(result: EvalResult, path: Path) -> None:
    """Write atomically: a half-written result file would poison later comparisons."""
    write_text_atomic(path, result.to_json() + "\n")


def read_json_result(path: Path, result_format: str, kind: str) -> dict:
    """Load a JSON result file whose ``format`` field must be ``result_format`` (one line naming ``kind`` if not)."""
    if not path.is_file():
        raise DataError(f"{path}: result file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != result_format:
        raise DataError(f"{path}: not {kind} (expected \"format\": \"{result_format}\")")
    return data


def read_result(path: Path) -> dict:
    """Load a result file, refusing anything that is not an ``engine eval`` result."""
    data = read_json_result(path, RESULT_FORMAT, "an engine eval result")
    missing = [key for key in RECALL_KEYS if key not in data.get("recalls", {})]
    if missing:
        raise DataError(f"{path}: field recalls lacks {', '.join(missing)}")
    interval = data.get("recalls_interval")
    if interval and not is_interval(interval):
        raise DataError(f"{path}: field recalls_interval must hold a level (percent) and bounds.mR = [low, high]")
    return data


RANKS_ENCODING = "int32 little-endian, zlib, base64"


def _pack(values) -> str:
    return base64.b64encode(zlib.compress(np.asarray(values, dtype="<i4").tobytes(), 9)).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    if len(raw) % 4:
        raise ValueError("byte count is not a multiple of 4")
    return np.frombuffer(raw, dtype="<i4").astype(np.int64)


def encode_ranks(ranks, text_to_image) -> dict:
    """A result file's compact copy of a split's ranks (``engine.metrics.RetrievalRanks``) and caption owners."""
    return {"encoding": RANKS_ENCODING, "image_to_text": _pack(ranks.image_to_text),
            "text_to_image": _pack(ranks.text_to_image), "caption_image": _pack(text_to_image)}


def _stored_arrays(path: Path, data: dict, keys: tuple[str, ...], what: str) -> list[np.ndarray]:
    """The arrays ``keys`` of a result file's ``ranks`` field, or one DataError line naming the file."""
    stored = data.get("ranks")
    problem = f"{path}: field ranks must be engine eval's encoded {what} ({RANKS_ENCODING})"
    if not isinstance(stored, dict) or stored.get("encoding") != RANKS_ENCODING:
        raise DataError(problem)
    try:
        return [_unpack(stored[key]) for key in keys]
    except (KeyError, TypeError, ValueError, binascii.Error, zlib.error, UnicodeEncodeError):
        raise DataError(problem) from None


def decode_ranks(path: Path, data: dict):
    """(RetrievalRanks, caption owners) from a result file's ``ranks``, or one DataError line naming the file."""
    from engine.metrics import RetrievalRanks

    image_ranks, text_ranks, owner = _stored_arrays(path, data, ("image_to_text", "text_to_image", "caption_image"),
                                                    "ranks")
    if (text_ranks.shape != owner.shape or (owner.size and (owner.min() < 0 or owner.max() >= image_ranks.size))
            or image_ranks.size != data.get("dataset", {}).get("images")):
        raise DataError(f"{path}: field ranks does not fit the split it names (images, captions or their owners)")
    return RetrievalRanks(image_to_text=image_ranks, text_to_image=text_ranks), owner


def encode_class_ranks(true_class_ranks, labels) -> dict:
    """A zero-shot result file's copy of each image's rank of its true class and its label (class position)."""
    return {"encoding": RANKS_ENCODING, "true_class_rank": _pack(true_class_ranks), "label": _pack(labels)}


def decode_class_ranks(path: Path, data: dict) -> tuple[np.ndarray, np.ndarray]:
    """(true-class ranks, labels) from a zero-shot result file's ``ranks``, or one DataError line naming the file."""
    ranks, labels = _stored_arrays(path, data, ("true_class_rank", "label"), "class ranks")
    dataset = data.get("dataset") if isinstance(data.get("dataset"), dict) else {}
    classes = dataset.get("classes")
    fits = (ranks.shape == labels.shape and ranks.size == dataset.get("images") and isinstance(classes, int)
            and all(((part >= 0) & (part < classes)).all() for part in (ranks, labels)))
    if not fits:
        raise DataError(f"{path}: field ranks does not fit the split it names (images or classes)")
    return ranks, labels


def is_interval(interval, key: str = "mR") -> bool:
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    bounds = interval.get("bounds") if isinstance(interval, dict) else None
    low_high = bounds.get(key) if isinstance(bounds, dict) else None
    return (number(interval.get("level")) and isinstance(low_high, list) and len(low_high) == 2
            and all(map(number, low_high)))


def result_label(path: Path, data: dict) -> str:
    return str(data.get("settings", {}).get("label") or path.stem)


def plot_comparison(rows: list[tuple[str, dict]], out: Path) -> None:
    """Grouped bars of the six recalls and mR per run: the figure retrieval papers show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ["I→T R@1", "I→T R@5", "I→T R@10", "T→I R@1", "T→I R@5", "T→I R@10", "mR"]
    positions = np.arange(len(RECALL_KEYS))
    width = 0.8 / max(len(rows), 1)
    figure, axes = plt.subplots(figsize=(max(7.0, 1.2 * len(RECALL_KEYS) + 0.4 * len(rows)), 4.2))
    for offset, (label, data) in enumerate(rows):
        values = [data["recalls"][key] for key in RECALL_KEYS]
        bars = axes.bar(positions + (offset - (len(rows) - 1) / 2) * width, values, width, label=label)
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(positions, names)
    axes.set_ylabel("Recall (%)")
    axes.set_ylim(0, 105)
    split = rows[0][1].get("dataset", {}).get("split", "?") if rows else "?"
    dataset = rows[0][1].get("dataset", {}).get("name", "?") if rows else "?"
    axes.set_title(f"Image-text retrieval, {dataset} ({split} split)")
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=130)
    plt.close(figure)
