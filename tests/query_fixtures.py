"""A tiny real index for query tests: the tiny-test model saved as a checkpoint, a generated Karpathy dataset,
both indexed through the real ``engine index`` code path; built once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_COUNT = 16
CLASSES = ("river", "farm")
SPLITS = ("train", "val", "test", "train")
SIDE = 64


def structured_image(seed: int, side: int = SIDE) -> Image.Image:
    """Stripes and a bright square at a seed-dependent place: content a CNN actually responds to."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    period = 4 + seed % 5
    base = (127 + 100 * np.sin(2 * np.pi * (x + seed * y / 7) / period)).astype(np.float32)
    picture = np.stack([base, np.roll(base, seed, axis=0), 255 - base], axis=-1)
    top, left = rng.integers(0, side // 2, size=2)
    picture[top:top + side // 3, left:left + side // 3] = rng.integers(0, 256, size=3)
    return Image.fromarray(np.clip(picture + rng.normal(0, 8, picture.shape), 0, 255).astype(np.uint8))


def write_dataset(root: Path) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for number in range(IMAGE_COUNT):
        image_id = 100 + number
        structured_image(number).save(root / "images" / f"tile_{number:03d}.png")
        label = CLASSES[number % 2]
        sentences = [{"raw": f"a {label} tile number {number} view {view}", "tokens": [], "imgid": image_id,
                      "sentid": image_id * 10 + view} for view in range(2)]
        entries.append({"filename": f"tile_{number:03d}.png", "imgid": image_id, "split": SPLITS[number % 4],
                        "sentids": [s["sentid"] for s in sentences], "sentences": sentences, "class": label})
    (root / "dataset.json").write_text(json.dumps({"images": entries}))


def build_query_index(base: Path) -> tuple[Path, Path, Path]:
    """(index dir, model dir, data dir) under ``base``, created on the first call only."""
    index_dir, model_dir, data_dir = base / "index", base / "model", base / "data"
    if (index_dir / "index.json").is_file():
        return index_dir, model_dir, data_dir
    import torch

    import encoders
    from engine.cli import main

    torch.manual_seed(0)
    encoders.save_model(encoders.create_model("tiny-test"), model_dir)
    write_dataset(data_dir)
    code = main(["index", str(data_dir), "--out", str(index_dir), "--model", str(model_dir), "--workers", "0",
                 "--shard-size", "6"])
    assert code == 0, "building the query test index failed"
    return index_dir, model_dir, data_dir
