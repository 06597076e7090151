"""`engine query-bank`: embed the training captions of one or more datasets with a trained model and store them
beside it as its query bank (``encoders.query_bank``: querybank normalisation of text→image search).

Only training splits feed the bank (a dataset without a published val split has its val carved out of train first,
as everywhere), so a bank never holds a caption that val or test scores. Identical caption strings are embedded
once and weighted by their count.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from engine.errors import ConfigError, DataError


def build_bank(model_dir: Path, data: list[Path], beta: float, images: Path | None = None,
               batch_size: int = 256) -> dict:
    """Write ``model_dir/query_bank.safetensors`` from the train captions of ``data``; returns its description."""
    from encoders.checkpoint import CONFIG_FILE, load_model
    from encoders.encode_stage import encode_captions
    from encoders.query_bank import QueryBank, save_bank
    from engine.data import load_dataset

    if not (beta > 0 and math.isfinite(beta)):
        raise ConfigError(f"--beta must be a positive number, got {beta}")
    if not (Path(model_dir) / CONFIG_FILE).is_file():
        raise ConfigError(f"{model_dir}: not a model checkpoint folder (the bank is written into it; a shipped "
                          "model is named by its folder, e.g. encoders/weights)")
    counts: Counter[str] = Counter()
    sources = []
    for path in data:
        dataset = load_dataset(path, images=images)
        captions = [caption.text for caption in dataset.split("train").captions]
        if not captions:
            raise DataError(f"{path}: its train split has no captions to put in a query bank")
        counts.update(captions)
        sources.append(f"{dataset.name} train ({len(captions)} captions)")
    model = load_model(model_dir)
    texts = list(counts)
    embeddings = encode_captions(model, texts, batch_size)
    bank = QueryBank(np.asarray(embeddings, np.float32), np.log(np.asarray([counts[t] for t in texts], np.float64)),
                     float(beta), model.fingerprint(one_view=True), "; ".join(sources))
    save_bank(bank, Path(model_dir))
    return bank.describe()
