"""Zero-shot scene classification (``engine eval DIR --zero-shot``): does the model's text side know the scenes
of an archive from their names alone?

Each class name goes through the fixed prompt set (``engine.evaluation.zero_shot_prompts``); the class's text
embedding is the L2-normalised mean of its prompts' embeddings. An image is assigned the classes in descending
order of dot product with them; top-k accuracy is the share of images whose true class is among the first k.
Equal scores keep class order (a stable sort). The per-class table gives each class's top-1 / top-k recall and
its most frequent wrong answer; the confusion matrix counts (true class, top-1 class).

Which images (no ``--split``): a collection the model never trained on is scored on every image; one it trained
on (the checkpoint's ``trained_on`` record names it: same dataset kind, or the same file listing) on what it held
out: an unsplit scene collection's fixed held-out part of ``engine.data.splits`` (AID: the 2,000 images the
instruction encoder and mixed training hold out), a split caption dataset's test split. The result says which
rule applied and how many images it scored.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from engine.atomic import write_text_atomic
from engine.errors import DataError
from engine.evaluation.report import is_interval, read_json_result

ZERO_SHOT_FORMAT = "engine-eval-zeroshot/1"
ZERO_SHOT_KS = (1, 5)


def zero_shot_metrics(image_emb, class_emb, labels, class_names: list[str],
                      ks: tuple[int, ...] = ZERO_SHOT_KS) -> dict:
    """Top-k accuracy (%), mean per-class top-1, per-class rows and the top-1 confusion matrix."""
    labels = np.asarray(labels, dtype=np.int64)
    order = _class_order(image_emb, class_emb)
    ranks = _true_rank(order, labels)
    predicted = order[:, 0]
    count = len(class_names)
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    rows = []
    for index, name in enumerate(class_names):
        mine = labels == index
        images = int(mine.sum())
        wrong = confusion[index].copy()
        wrong[index] = 0
        row = {"class": name, "images": images}
        for k in ks:
            row[f"top{k}"] = float((ranks[mine] < k).mean() * 100) if images else None
        row["most_confused_with"] = class_names[int(wrong.argmax())] if wrong.any() else None
        rows.append(row)
    present = [row["top1"] for row in rows if row["images"]]
    accuracy = {f"top{k}": float((ranks < k).mean() * 100) for k in ks}
    accuracy["mean_class_top1"] = float(np.mean(present))
    return {"accuracy": accuracy, "per_class": rows,
            "confusion": {"classes": list(class_names), "rows_true_columns_predicted": confusion.tolist()}}


def _class_order(image_emb, class_emb) -> np.ndarray:
    """Per image, the classes in descending score order (ties keep class order)."""
    scores = np.asarray(image_emb, dtype=np.float32) @ np.asarray(class_emb, dtype=np.float32).T
    return np.argsort(-scores, axis=1, kind="stable")


def _true_rank(order: np.ndarray, labels) -> np.ndarray:
    return np.argmax(order == np.asarray(labels, dtype=np.int64)[:, None], axis=1)


def true_class_ranks(image_emb, class_emb, labels) -> np.ndarray:
    """Each image's 0-based rank of its true class, the ranking ``zero_shot_metrics`` scores."""
    return _true_rank(_class_order(image_emb, class_emb), labels)


@dataclass
class ZeroShotResult:
    dataset: dict
    model: dict
    prompts: dict
    accuracy: dict[str, float]
    per_class: list[dict]
    confusion: dict
    # percentile image-bootstrap intervals of ``accuracy`` (engine.metrics.accuracy_intervals); empty when not drawn
    accuracy_interval: dict = field(default_factory=dict)
    # each image's rank of its true class and its label (report.encode_class_ranks), for a paired --compare
    ranks: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    git_commit: str = "unknown"
    created: str = ""
    seconds: float = 0.0
    ties: str = "equal scores keep class order (stable sort)"
    format: str = ZERO_SHOT_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def class_text_embeddings(model, class_names: list[str]) -> np.ndarray:
    """(classes, dim): normalised mean of each class's prompt embeddings."""
    import torch

    from engine.evaluation.zero_shot_prompts import class_prompts

    rows = []
    with torch.inference_mode():
        for name in class_names:
            prompts = model.encode_text(class_prompts(name)).float().cpu().numpy()
            mean = prompts.mean(axis=0)
            rows.append(mean / max(np.linalg.norm(mean), 1e-12))
    return np.stack(rows).astype(np.float32)


GENERIC_KINDS = frozenset({"karpathy", "pir", "precomp", "scene_folders", "images"})  # formats, not datasets


def trained_on_this(identity: dict, trained_on: list[dict]) -> dict | None:
    """The ``trained_on`` record that names this dataset: same identified kind (a public dataset such as ``aid``,
    wherever it is copied), or the same file listing."""
    for record in trained_on:
        if identity["kind"] not in GENERIC_KINDS and record.get("kind") == identity["kind"]:
            return record
        if record.get("listing") == identity["listing"]:
            return record
    return None


def default_split(dataset, trained_on: list[dict]) -> tuple[str, str]:
    """(split, why) for ``--zero-shot`` without ``--split``."""
    from engine.data.splits import HELD_OUT, is_unsplit

    record = trained_on_this(dataset.identity(), trained_on)
    if record is None:
        return "all", f"the model's training record does not name {dataset.name}"
    part = record.get("part", "train part")
    return (HELD_OUT if is_unsplit(dataset) else "test"), f"the model trained on the {part} of {dataset.name}"


def evaluate_zero_shot(root: Path, split: str | None, checkpoint: str | None, batch_size: int, workers: int,
                       device: str, label: str | None = None, test_time_views: int | None = None,
                       bootstrap: int = 0) -> ZeroShotResult:
    """Load a labelled dataset, encode the split's images (``None``: see ``default_split``) and the class prompts,
    and score them; ``bootstrap`` draws give the accuracies' 95% intervals (0: none)."""
    import encoders
    from engine.data import load_dataset
    from engine.data.scene_names import scene_words
    from engine.data.splits import DEFAULT_SPLIT_SEED, DEFAULT_TRAIN_FRACTION, is_unsplit, split_part
    from engine.evaluation.embed import embed_images
    from engine.evaluation.report import encode_class_ranks, git_commit
    from engine.evaluation.zero_shot_prompts import PROMPT_SET, PROMPTS
    from engine.metrics import accuracy_intervals

    started = time.perf_counter()
    dataset = load_dataset(root)
    if not dataset.has_labels:
        missing = sum(image.label is None for image in dataset.images)
        raise DataError(f"{dataset.annotation_file or dataset.root}: {missing} of {len(dataset.images)} images have "
                        "no scene class; --zero-shot needs a class per image (<root>/<Class>/<image> folders, or "
                        "a 'class' per image in the caption file)")
    class_names = dataset.classes
    if len(class_names) < 2:
        raise DataError(f"{dataset.root}: only one class ({class_names[0]}); zero-shot classification needs "
                        "at least 2")
    why = "--split given"
    if split is None:
        from encoders.checkpoint import training_provenance

        split, why = default_split(dataset, training_provenance(checkpoint))
    subset = split_part(dataset, split)
    if not subset.images:
        raise DataError(f"{dataset.annotation_file or dataset.root}: no images in split {split!r} "
                        f"(splits present: {dataset.split_counts()})")
    model = encoders.load_model(checkpoint)
    if test_time_views is not None:
        model.set_test_time_views(test_time_views)
    index = {name: position for position, name in enumerate(class_names)}
    labels = np.array([index[image.label] for image in subset.images], dtype=np.int64)
    images = embed_images(model, [image.path for image in subset.images], batch_size, workers, device)
    classes = class_text_embeddings(model, class_names)
    metrics = zero_shot_metrics(images, classes, labels, class_names)
    ranks = true_class_ranks(images, classes, labels)
    how_split = ("every image" if split == "all" else f"the dataset's own {split} split" if not is_unsplit(dataset) else
                 f"held-out part of the stratified split (train fraction {DEFAULT_TRAIN_FRACTION}, seed "
                 f"{DEFAULT_SPLIT_SEED}; engine.data.splits)" if split != "train" else
                 f"train part of the stratified split (train fraction {DEFAULT_TRAIN_FRACTION}, seed "
                 f"{DEFAULT_SPLIT_SEED})")
    return ZeroShotResult(
        dataset={"name": dataset.name, "kind": dataset.kind, "root": str(root), "split": split,
                 "split_rule": f"{len(subset.images):,} images: {how_split} ({why})",
                 "images": len(subset.images), "classes": len(class_names)},
        model={"spec": checkpoint or "shipped-default", "fingerprint": model.fingerprint()},
        prompts={"set": PROMPT_SET, "templates": list(PROMPTS),
                 "class_phrases": {name: scene_words(name).name for name in class_names}},
        settings={"batch_size": batch_size, "device": device, "label": label,
                  "test_time_views": model.config.vision.test_time_views},
        accuracy_interval=accuracy_intervals(ranks, labels, bootstrap) if bootstrap else {},
        ranks=encode_class_ranks(ranks, labels),
        git_commit=git_commit(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 2), **metrics)


def write_zero_shot(result: ZeroShotResult, path: Path) -> None:
    write_text_atomic(path, result.to_json() + "\n")


def read_zero_shot(path: Path) -> dict:
    data = read_json_result(path, ZERO_SHOT_FORMAT, "a zero-shot result")
    missing = [key for key in ("top1", "top5", "mean_class_top1") if key not in (data.get("accuracy") or {})]
    if missing:
        raise DataError(f"{path}: field accuracy lacks {', '.join(missing)}")
    interval = data.get("accuracy_interval")
    if interval and not is_interval(interval, "top1"):
        raise DataError(f"{path}: field accuracy_interval must hold a level (percent) and bounds.top1 = [low, high]")
    return data


def is_zero_shot_file(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == ZERO_SHOT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def plot_confusion(result: ZeroShotResult | dict, out: Path) -> None:
    """Row-normalised confusion matrix (true class down, top-1 answer across) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = asdict(result) if isinstance(result, ZeroShotResult) else result
    names = data["confusion"]["classes"]
    counts = np.asarray(data["confusion"]["rows_true_columns_predicted"], dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(6.0, 0.28 * len(names) + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1.0, size))
    image = axes.imshow(shares * 100, cmap="viridis", vmin=0, vmax=100)
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axes.set_yticks(range(len(names)), names, fontsize=7)
    axes.set_xlabel("top-1 answer")
    axes.set_ylabel("true class")
    accuracy = data["accuracy"]
    axes.set_title(f"Zero-shot, {data['dataset']['name']} {data['dataset']['split']} "
                   f"({data['dataset']['images']} images): top-1 {accuracy['top1']:.2f}%, "
                   f"top-5 {accuracy['top5']:.2f}%", fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="% of the true class")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
