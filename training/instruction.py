"""`engine train-instruction`: train the instruction encoder's scene classifier on a scene-class dataset (AID).

How: a deterministic stratified split (per class, a seeded shuffle of the files in natural order; the first
``train_fraction`` train, the rest held out), then the frozen backbone's pooled feature is computed once per
image (and per augmented view for training images) and only the linear classifier is trained on those cached
features. On 2 CPU cores the backbone pass costs minutes while classifier epochs cost milliseconds, so this is
what makes AID training feasible here. PIR used a 20 % train / 80 % test split; we default to 80 / 20 because
the classifier is a tool here, not the object of study. With ``--unfreeze-last N`` the backbone's last N stages
train too, from cached trunk maps (``training/instruction_tail.py``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.data.model import Dataset
from engine.data.splits import stratified_split
from engine.errors import ConfigError
from encoders.views import apply_view
from training.seeding import seed_everything
from engine.atomic import write_text_atomic

WEIGHTS_FILE = "instruction.safetensors"
REPORT_FILE = "instruction_report.json"


@dataclass(frozen=True)
class InstructionTrainConfig:
    model: str = "offline-default"
    epochs: int = 30
    train_fraction: float = 0.8
    seed: int = 42
    views: int = 4
    batch_size: int = 256
    feature_batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    unfreeze_last: int = 0  # > 0: also train the backbone's last N stages (training/instruction_tail.py)
    backbone_lr_scale: float = 0.1  # learning rate of those stages = learning_rate x this
    feature_cache: str | None = None  # folder for the cached trunk maps (with unfreeze_last > 0)
    train_backbone: bool = False  # fine-tune the whole (own) instruction backbone from image files
    finetune_batch_size: int = 32  # images per step of that fine-tuning

    def __post_init__(self) -> None:
        if not 0 < self.train_fraction < 1:
            raise ConfigError(f"--train-fraction must be in (0, 1), got {self.train_fraction}")
        if self.epochs < 1 or self.views < 1:
            raise ConfigError("--epochs and --views must be >= 1")
        if self.unfreeze_last < 0 or self.backbone_lr_scale <= 0:
            raise ConfigError("--unfreeze-last must be >= 0 and --backbone-lr-scale > 0")
        if self.train_backbone and self.unfreeze_last:
            raise ConfigError("--train-backbone trains every stage; drop --unfreeze-last")
        if self.finetune_batch_size < 2:
            raise ConfigError("--batch-size must be >= 2")


@dataclass(frozen=True)
class InstructionReport:
    weights_path: Path
    classes: int
    train_images: int
    test_images: int
    test_top1: float


def _pooled_features(encoder, dataset: Dataset, positions: list[int], views: int, batch_size: int,
                     transform) -> torch.Tensor:
    """(len(positions), views, width) pooled features of the frozen backbone."""
    from engine.data.images import load_rgb

    chunks = []
    with torch.no_grad():
        for start in range(0, len(positions), batch_size):
            pixels = torch.stack([transform(load_rgb(dataset.images[p].path))
                                  for p in positions[start:start + batch_size]])
            chunks.append(torch.stack([encoder.features(apply_view(pixels, v)) for v in range(views)], dim=1))
    return torch.cat(chunks)


def train_instruction(dataset: Dataset, settings: InstructionTrainConfig, out: Path,
                      show_progress: bool = True) -> InstructionReport:
    from encoders.model_config import load_config
    from encoders.instruction import InstructionEncoder
    from encoders.vision import VisionBackbone

    seed_everything(settings.seed)
    train_positions, test_positions = stratified_split(dataset, settings.train_fraction, settings.seed)
    classes = dataset.classes
    base = load_config(settings.model).instruction
    target_config = dataclasses.replace(base, num_classes=len(classes), class_names=tuple(classes), weights=None)
    # Features always come from a backbone of our own; with a shared backbone (the offline default) that is the
    # very network the vision side runs, so only the classifier is trained and saved (see _save_for).
    config = dataclasses.replace(target_config, share_vision_backbone=False)
    encoder = InstructionEncoder(config)
    image_config = dataclasses.replace(load_config(settings.model).vision, timm_name=config.timm_name,
                                       pretrained=config.pretrained)
    transform = VisionBackbone(image_config).image_transform(train=False)
    label_index = {name: index for index, name in enumerate(classes)}
    labels = torch.tensor([label_index[image.label] for image in dataset.images])
    if settings.train_backbone and target_config.share_vision_backbone:
        raise ConfigError(f"--train-backbone: config {settings.model!r} shares the vision backbone with its "
                          "instruction; use a config whose instruction has its own backbone "
                          "(e.g. offline-separate-instruction)")
    what = "trunk maps" if settings.unfreeze_last else "pooled features"
    if settings.train_backbone:
        what = "nothing (end-to-end fine-tuning from the image files)"
    if show_progress:
        print(f"caching {what}: {len(train_positions)} train images x {settings.views} views, "
              f"{len(test_positions)} held-out images", flush=True)
    train_labels, test_labels = labels[train_positions], labels[test_positions]
    if settings.train_backbone:
        from training.instruction_full import fit_backbone, predict_files

        fit_backbone(encoder, dataset, train_positions, train_labels, transform, settings, settings.views,
                     show_progress)
        predictions = predict_files(encoder, dataset, test_positions, transform, settings.feature_batch_size)
    elif settings.unfreeze_last:
        predictions = _train_with_tail(encoder, dataset, train_positions, test_positions, train_labels, transform,
                                       settings, show_progress)
    else:
        train_features = _pooled_features(encoder, dataset, train_positions, settings.views,
                                          settings.feature_batch_size, transform)
        test_features = _pooled_features(encoder, dataset, test_positions, 1, settings.feature_batch_size, transform)
        _fit_classifier(encoder, train_features, train_labels, settings)
        with torch.no_grad():
            predictions = encoder.classifier(test_features[:, 0]).argmax(dim=1)
    top1 = float((predictions == test_labels).float().mean())
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_FILE
    _save_for(target_config, encoder, weights_path, settings.unfreeze_last)
    report = InstructionReport(weights_path, len(classes), len(train_positions), len(test_positions), top1)
    write_text_atomic(out / REPORT_FILE, json.dumps({
        "dataset": str(dataset.root), "classes": classes, "split": {"train_fraction": settings.train_fraction,
        "seed": settings.seed, "train_images": len(train_positions), "test_images": len(test_positions)},
        "held_out_top1": top1, "settings": dataclasses.asdict(settings),
        "instruction_config": dataclasses.asdict(config)}, indent=2))
    return report


def _train_with_tail(encoder, dataset: Dataset, train_positions: list[int], test_positions: list[int],
                     train_labels: torch.Tensor, transform, settings: InstructionTrainConfig,
                     show_progress: bool) -> torch.Tensor:
    """Cached trunk maps, then tail + classifier training; returns the held-out predictions."""
    from training.instruction_tail import cached_trunks, fit_tail, predict

    network, tail = encoder.backbone, settings.unfreeze_last
    folder = Path(settings.feature_cache) if settings.feature_cache else None
    batch = settings.feature_batch_size
    test_trunks = cached_trunks(network, dataset, test_positions, 1, tail, transform, batch, folder)
    train_trunks = cached_trunks(network, dataset, train_positions, settings.views, tail, transform, batch, folder)
    fit_tail(network, encoder.classifier, train_trunks, train_labels, tail, settings, show_progress)
    return predict(network, encoder.classifier, test_trunks, tail, settings.batch_size)


def _save_for(target_config, trained, path: Path, tail: int) -> None:
    """Save weights in the layout the model config loads: with a shared vision backbone, the classifier plus (when
    the tail was trained) the tail's tensors for that backbone; otherwise the whole encoder."""
    from encoders.instruction import InstructionEncoder
    from training.instruction_tail import tail_state

    if not target_config.share_vision_backbone:
        trained.save_weights(path)
        return
    target = InstructionEncoder(target_config, shared_width=trained.pooled_width)
    target.classifier.load_state_dict(trained.classifier.state_dict())
    target.save_weights(path, tail_state(trained.backbone, tail) if tail else None)


def _fit_classifier(encoder, features: torch.Tensor, labels: torch.Tensor, settings: InstructionTrainConfig) -> None:
    """The linear classifier alone, on cached pooled features (the same loop as the tail training)."""
    from training.instruction_tail import fit_on_samples

    classifier = encoder.classifier
    fit_on_samples(classifier, classifier, [{"params": list(classifier.parameters()), "lr": settings.learning_rate}],
                   features, labels, settings)
