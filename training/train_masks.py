"""Background masks on training images (``engine train --train-mask hard|soft --train-masks DIR``).

The background-bias study trains metric-learning models on images whose background is set to 0 (hard) or scaled
by σ (soft) and compares per-class Recall@K with and without masks. Here the foreground comes from a folder of
PNG masks, one per image stem (``engine index masks``: VIR's belief of a trained model, or the colour-contrast
estimate), applied to the 8-bit image before the model's transform, exactly as ``engine index --mask`` does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.masking import MaskOptions, apply_mask, check_masks_present, load_mask, mask_path_for
from training.train_config import TrainConfig
from training.pairs import PairSet


@dataclass(frozen=True)
class TrainingMasks:
    options: MaskOptions
    folder: Path
    digest: str  # hash of the mask files used, so a cache built with other masks is never reused

    @classmethod
    def from_config(cls, config: TrainConfig, pairs: PairSet) -> "TrainingMasks | None":
        if config.train_mask == "none":
            return None
        folder = Path(config.train_masks)
        paths = [Path(path) for path in pairs.image_paths]
        check_masks_present(folder, paths)  # one clear error before anything is encoded
        digest = hashlib.sha256()
        for path in paths:
            digest.update(mask_path_for(folder, path).read_bytes())
        sigma = config.train_mask_sigma if config.train_mask == "soft" else None
        return cls(MaskOptions(mode=config.train_mask, sigma=sigma, masks_dir=str(folder)), folder,
                   digest.hexdigest()[:16])

    def describe(self) -> str:
        return f"|train-mask {self.options.mode} sigma {self.options.sigma} masks {self.digest}"

    def __call__(self, path: str, image: Image.Image) -> Image.Image:
        foreground, _ = load_mask(mask_path_for(self.folder, Path(path)), image.width, image.height)
        return Image.fromarray(apply_mask(np.asarray(image), foreground, self.options))
