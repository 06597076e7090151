"""A tiny random-weight encoder with the ``encoders`` model interface, for indexing tests.

Used until/unless ``encoders.create_model("tiny-test")`` is fast enough here. ``fake_load_model(spec)`` accepts
``"fake-<seed>"`` and ``"fake-<seed>:slow"`` (sleeps per image batch, so a test can kill a run mid-way).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

IMAGE_SIDE = 16
EMBED_DIM = 8
SLOW_SECONDS_PER_BATCH = 0.15


@dataclass(frozen=True)
class FakeVision:
    test_time_views: int = 1


@dataclass(frozen=True)
class FakeConfig:
    embed_dim: int = EMBED_DIM
    vision: FakeVision = FakeVision()


class FakeEncoder(nn.Module):
    def __init__(self, seed: int, slow: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.config = FakeConfig()
        self.seed, self.slow = seed, slow
        self.image_head = nn.Parameter(torch.randn(3 * 4 * 4, EMBED_DIM, generator=generator))
        self.text_head = nn.Parameter(torch.randn(64, EMBED_DIM, generator=generator))

    def image_transform(self, train: bool = False):
        def transform(image: Image.Image) -> torch.Tensor:
            resized = image.convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
            return torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(
                IMAGE_SIDE, IMAGE_SIDE, 3).permute(2, 0, 1).float() / 255.0

        return transform

    def set_test_time_views(self, views: int) -> "FakeEncoder":
        from encoders.model_config import VisionConfig

        VisionConfig(test_time_views=views).validate()  # the real model's check and message
        self.config = FakeConfig(vision=FakeVision(views))
        return self

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        from encoders.views import view_averaged

        if self.slow:
            time.sleep(SLOW_SECONDS_PER_BATCH)
        return view_averaged(self._encode_view, pixels, self.config.vision.test_time_views)

    def _encode_view(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(pixels, 4).flatten(1)
        return nn.functional.normalize(pooled @ self.image_head, dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        features = torch.zeros(len(texts), 64)
        for row, text in enumerate(texts):
            for char in text.encode():
                features[row, char % 64] += 1.0
        return nn.functional.normalize(features @ self.text_head, dim=1)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"fake-encoder:{self.seed}:{self.config.vision.test_time_views}".encode())
        for parameter in self.parameters():
            digest.update(parameter.detach().numpy().tobytes())
        return digest.hexdigest()


def fake_load_model(spec: str | None) -> FakeEncoder:
    name, _, option = (spec or "fake-0").partition(":")
    return FakeEncoder(seed=int(name.removeprefix("fake-")), slow=option == "slow")


def install() -> None:
    """Route ``encoders.load_model`` to the fake (for subprocesses started by tests)."""
    import encoders

    encoders.load_model = fake_load_model


# -- generated data sets -------------------------------------------------------------------------------------
def write_images(folder, count: int, side: int = 20, seed: int = 0, prefix: str = "img", start: int = 0) -> list:
    """``count`` random RGB PNGs named ``<prefix>_<n>.png``; returns their paths."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for number in range(start, start + count):
        path = folder / f"{prefix}_{number:04d}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_karpathy(root, count: int, captions_per_image: int = 2, first_id: int = 100) -> None:
    """A small Karpathy-style dataset (``dataset.json`` + ``images/``) with explicit, non-zero-based ids."""
    import json

    write_images(root / "images", count, prefix="tile")
    splits = ("train", "val", "test")
    entries = []
    for position in range(count):
        image_id = first_id + position
        sentences = [{"raw": f"tile {position} caption {k} {'river' if position % 2 else 'farm'}",
                      "tokens": [], "imgid": image_id, "sentid": image_id * 10 + k}
                     for k in range(captions_per_image)]
        entries.append({"filename": f"tile_{position:04d}.png", "imgid": image_id, "split": splits[position % 3],
                        "sentids": [s["sentid"] for s in sentences], "sentences": sentences,
                        "class": "river" if position % 2 else "farm"})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
