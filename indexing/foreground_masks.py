"""``engine index masks``: write one foreground PNG per image (same stem), for ``--masks`` of index and train.

Sources: ``colour`` is the built-in colour-contrast estimate of ``engine.data.masking`` (model-independent);
``vir-belief`` / ``vir-attention`` are where a trained model looks (``encoders.foreground``): the patch grid is
upsampled bilinearly to the file's pixels and thresholded with Otsu's method (a grid without spread keeps every
pixel). The folder also gets ``masks.json``: the source, the model's fingerprint, and the share of pixels kept as
foreground per image, per class and overall, which is what says whether a mask removes the background or the
class itself (a texture scene such as a golf course or a river *is* its "background").
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.atomic import replace_atomically, write_text_atomic
from engine.errors import ConfigError, DataError
from engine.data.masking import estimate_foreground, mask_path_for, otsu_threshold

COLOUR_SOURCE = "colour"
MASKS_REPORT = "masks.json"
GRID_FLAT = 1e-6  # a saliency grid with less spread than this has nothing to separate: every pixel is kept


@dataclass(frozen=True)
class MaskReport:
    folder: Path
    images: int
    mean_foreground: float
    per_class: dict[str, float]


def foreground_from_grid(grid, width: int, height: int) -> np.ndarray:
    """(g, g) saliency -> (height, width) bool: bilinear upsampling, then Otsu's threshold over the pixels."""
    from encoders.foreground import upsample_grid

    if float(grid.max() - grid.min()) <= GRID_FLAT:
        return np.ones((height, width), dtype=bool)
    smooth = upsample_grid(grid, height, width).numpy().astype(np.float64)
    threshold = otsu_threshold(smooth)
    return np.ones((height, width), dtype=bool) if threshold is None else smooth >= threshold


def _whole_image_pixels(model, images: list[Image.Image]):
    """The images resized to the model's input size (no crop) and normalised like its transform."""
    import torch

    size = model.config.vision.image_size
    mean = torch.tensor(model.vision.data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(model.vision.data_config["std"]).view(3, 1, 1)
    tensors = []
    for image in images:
        array = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
        tensors.append((torch.from_numpy(array).permute(2, 0, 1) - mean) / std)
    return torch.stack(tensors)


def write_masks(data_dir: Path, out: Path, source: str, model_spec: str | None, split: str | None,
                batch_size: int = 32, on_progress=None) -> MaskReport:
    """Write ``out/<stem>.png`` (255 = foreground) for every image of the dataset (or one split) + masks.json."""
    from encoders.foreground import FOREGROUND_SOURCES
    from engine.data import load_dataset
    from engine.data.images import load_rgb

    if source not in (COLOUR_SOURCE, *FOREGROUND_SOURCES):
        raise ConfigError(f"--source must be one of {', '.join((COLOUR_SOURCE, *FOREGROUND_SOURCES))}, got {source!r}")
    if source == COLOUR_SOURCE and model_spec is not None:
        raise ConfigError("--model only matters for a model source (vir-belief, vir-attention), not colour")
    dataset = load_dataset(data_dir)
    images = dataset.split(split).images if split else dataset.images
    if not images:
        raise DataError(f"{data_dir}: no images{f' in split {split!r}' if split else ''}")
    stems: dict[str, Path] = {}
    for record in images:
        other = stems.setdefault(record.path.stem, record.path)
        if other != record.path:
            raise DataError(f"{data_dir}: {other} and {record.path} share the file stem {record.path.stem!r}; "
                            "mask files are named by stem")
    model = fingerprint = None
    if source != COLOUR_SOURCE:
        import encoders

        model = encoders.load_model(model_spec).eval()
        fingerprint = model.fingerprint()
    out.mkdir(parents=True, exist_ok=True)
    fractions: dict[str, float] = {}
    labels: dict[str, str | None] = {}
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pictures = [load_rgb(record.path) for record in chunk]
        if model is not None:
            from encoders.foreground import patch_saliency

            grids = patch_saliency(model, _whole_image_pixels(model, pictures), source)
            masks = [foreground_from_grid(grid, picture.width, picture.height)
                     for grid, picture in zip(grids, pictures)]
        else:
            masks = [estimate_foreground(np.asarray(picture)) for picture in pictures]
        for record, mask in zip(chunk, masks):
            path = mask_path_for(out, record.path)
            picture = Image.fromarray((mask * 255).astype(np.uint8), mode="L")
            replace_atomically(path, lambda temp, picture=picture: picture.save(temp, format="PNG"), durable=False)
            fractions[record.path.stem] = float(mask.mean())
            labels[record.path.stem] = record.label
        if on_progress:
            on_progress(min(start + batch_size, len(images)), len(images))
    by_class: dict[str, list[float]] = {}
    for stem, fraction in fractions.items():
        if labels[stem] is not None:
            by_class.setdefault(labels[stem], []).append(fraction)
    per_class = {name: statistics.mean(values) for name, values in sorted(by_class.items())}
    report = MaskReport(out, len(fractions), statistics.mean(fractions.values()), per_class)
    write_text_atomic(out / MASKS_REPORT, json.dumps({
        "source": source, "data": str(data_dir), "split": split, "model": model_spec or "shipped-default",
        "fingerprint": fingerprint, "threshold": "otsu over the pixels of the upsampled grid" if model is not None
        else "built-in colour-contrast estimate (engine.data.masking)", "images": report.images,
        "mean_foreground": report.mean_foreground, "per_class_foreground": per_class,
        "per_image_foreground": fractions}, indent=2))
    return report
