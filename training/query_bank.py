"""`engine query-bank`: embed the training captions and/or images of one or more datasets with a trained model and
store them beside it as its query bank (``encoders.query_bank``: querybank normalisation of cross-modal search).

Only training splits feed the bank (a dataset without a published val split has its val carved out of train first,
as everywhere), so a bank never holds a caption or image that val or test scores. Identical caption strings are
embedded once and weighted by their count; images are embedded with one view unless asked otherwise (a bank
stands for the queries' distribution, and one view costs a quarter of the shipped four).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from engine.errors import ConfigError, DataError


DIRECTIONS = ("both", "t2i", "i2t")
WEIGHTINGS = ("count", "balanced")  # every caption/image once | every dataset the same total weight


def build_bank(model_dir: Path, data: list[Path], beta: float, images: Path | None = None,
               directions: str = "both", batch_size: int = 64, workers: int = 0, device: str = "auto",
               image_views: int = 1, weighting: str = "count") -> dict:
    """Write ``model_dir/query_bank.safetensors`` from the train split of ``data``: captions (``t2i``), images
    (``i2t``) or both, the images with ``image_views`` test-time views; returns its description."""
    from encoders.checkpoint import CONFIG_FILE, load_model
    from encoders.encode_stage import encode_captions, encode_image_files
    from encoders.query_bank import QueryBank, save_bank
    from engine.data import load_dataset

    if not (beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"--beta must be a positive number, got {beta}")
    from encoders.views import VIEW_NAMES

    if not 1 <= image_views <= len(VIEW_NAMES):
        raise ConfigError(f"--test-time-views must be 1..{len(VIEW_NAMES)}, got {image_views}")
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"--weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if directions not in DIRECTIONS:
        raise ConfigError(f"--directions must be one of {', '.join(DIRECTIONS)}, got {directions!r}")
    if not (Path(model_dir) / CONFIG_FILE).is_file():
        raise ConfigError(f"{model_dir}: not a model checkpoint folder (the bank is written into it; a shipped "
                          "model is named by its folder, e.g. encoders/weights)")
    counts: Counter[str] = Counter()
    text_mass: Counter[str] = Counter()  # balanced: each dataset's captions sum to 1
    paths: list[str] = []
    image_mass: list[float] = []
    sources = []
    for path in data:
        dataset = load_dataset(path, images=images)
        train = dataset.split("train")
        captions = [caption.text for caption in train.captions]
        if not captions:
            raise DataError(f"{path}: its train split has no captions to put in a query bank")
        counts.update(captions)
        for text, count in Counter(captions).items():
            text_mass[text] += count / len(captions)
        paths.extend(image.path for image in train.images)
        image_mass.extend([1.0 / len(train.images)] * len(train.images))
        sources.append(f"{dataset.name} train ({len(train.images)} images, {len(captions)} captions)")
    from engine.devices import resolve_device

    target = resolve_device(device)
    model = load_model(model_dir).to(target)
    fingerprint = model.fingerprint(one_view=True)
    model.set_test_time_views(image_views)  # checked above, before the model loaded
    texts = list(counts)
    text_rows = weights = image_rows = None
    if directions in ("both", "t2i"):
        text_rows = np.asarray(encode_captions(model, texts, batch_size * 4), np.float32)
        mass = text_mass if weighting == "balanced" else counts
        weights = np.log(np.asarray([mass[t] for t in texts], np.float64))
    if directions in ("both", "i2t"):
        image_rows = np.asarray(encode_image_files(model, paths, batch_size, workers, target), np.float32)
    views = f"; images at {image_views} view" + ("s" if image_views > 1 else "") if image_rows is not None else ""
    image_weights = (np.log(np.asarray(image_mass, np.float64))
                     if weighting == "balanced" and image_rows is not None else None)
    bank = QueryBank(text_rows, weights, image_rows, float(beta), fingerprint,
                     "; ".join(sources) + views + ("; datasets weighted equally" if weighting == "balanced" else ""),
                     image_weights)
    save_bank(bank, Path(model_dir))
    from encoders.query_bank import read_bank

    return read_bank(Path(model_dir), fingerprint, model.config.head.embed_dim).describe()  # as stored (float16)
