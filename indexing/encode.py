"""Image loading (in DataLoader workers) and batched encoding: the torch side of indexing.

A worker must never crash on a bad file: ``ImageItems`` returns a sentinel item (``ok=False`` with the reason)
that the main process logs and counts, so indexing continues. Masking happens here, on the 8-bit RGB image,
before the model's own transform.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.torch_shim import ensure_torchvision_importable

ensure_torchvision_importable()

import torch  # noqa: E402  (the shim must run before anything imports torchvision)
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from engine.data.masking import MaskOptions, apply_mask, estimate_foreground, load_mask, mask_path_for  # noqa: E402

PROBE_SIDE = 32  # size of the blank image used to learn the transform's output shape
# ``--image-runtime auto`` compiles the image encoder (an ONNX export: seconds) only for at least this many images
AUTO_RUNTIME_MIN_IMAGES = 512
MAX_DEFAULT_WORKERS = 8
INLINE_DECODE_MAX_CORES = 2  # measured on 2 cores only; larger machines keep decode processes
NAMED_CONFIG_SEED = 0


@dataclass(frozen=True)
class PlannedImage:
    """One image scheduled for a shard: its index id, the dataset's id, files and labels."""

    image_id: int
    source_id: int
    path: Path
    rel_path: str
    split: str | None
    label: str | None
    chip: Any = None  # engine.data.geo_scenes.ChipSpec: a window of a GeoTIFF scene; None = the whole file


def runtime_for(requested: str, images: int, device: torch.device, compiled: str = "auto") -> str:
    """The runtime to build (encoders.image_runtime / encoders.batch_text): ``auto`` means eager on CUDA or for a
    few hundred images (a compiled graph would not pay back its build time), else ``compiled``."""
    if requested != "auto":
        return requested
    return "eager" if device.type != "cpu" or images < AUTO_RUNTIME_MIN_IMAGES else compiled


def image_encoder(model: Any, runtime: str, threads: int | None = None) -> Any:
    """The model's image encoder on ``runtime`` (falls back to eager when that runtime is not faithful)."""
    from encoders.image_runtime import best_image_runtime

    if not hasattr(model, "encode_image_view"):  # a stand-in model without the one-view API (tests' fakes)
        return _PlainEncoder(model)
    return best_image_runtime(model, runtime, threads)


class _PlainEncoder:
    def __init__(self, model: Any) -> None:
        self.model, self.config = model, model.config

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def describe(self) -> str:
        return "eager"


def default_workers(device: torch.device | None = None) -> int:
    """Decode processes beside the encoder: none when a CPU encoder already uses every core of a machine of at
    most ``INLINE_DECODE_MAX_CORES`` (a decode process there only takes cores from the encoder's threads and adds
    a copy of every tile between processes; decoding in the loop is faster: docs/benchmarks.md, "Image encoding
    near the limit"), else cores - 1, at most ``MAX_DEFAULT_WORKERS``."""
    from engine.devices import usable_cores

    cores = usable_cores()
    if (device is None or device.type == "cpu") and cores <= INLINE_DECODE_MAX_CORES:
        return 0
    return max(0, min(MAX_DEFAULT_WORKERS, cores - 1))


def load_encoder(spec: str | None, device: torch.device) -> Any:
    """``--model``: a checkpoint folder, a shipped config name (fresh weights, e.g. ``tiny-test``), or None for the
    shipped default model; returned in eval mode on ``device``."""
    import encoders

    named = getattr(encoders, "create_model", None) is not None and spec is not None and not Path(spec).exists()
    if named:
        from encoders.model_config import named_configs

        named = spec in named_configs()
    if named:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(NAMED_CONFIG_SEED)  # same weights every run, so a resumed build sees the same model
            model = encoders.create_model(spec)
    else:
        model = encoders.load_model(spec)
    model.to(device)
    model.eval()
    return model


class ImageItems(Dataset):
    """Planned images → (pixels, metadata) items; unreadable files become sentinels, never exceptions."""

    def __init__(self, images: list[PlannedImage], transform: Any, mask: MaskOptions) -> None:
        self.images = images
        self.transform = transform
        self.mask = mask
        self.masks_dir = Path(mask.masks_dir) if mask.masks_dir else None
        probe = transform(Image.new("RGB", (PROBE_SIDE, PROBE_SIDE)))
        self.blank = torch.zeros_like(probe)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int) -> dict[str, Any]:
        return {"position": position, **decode_planned(self.images[position], self.transform, self.mask,
                                                       self.masks_dir, self.blank)}


def decode_planned(planned: PlannedImage, transform: Any, mask: MaskOptions, masks_dir: Path | None,
                   blank: torch.Tensor) -> dict[str, Any]:
    """Read, mask and transform one planned image: the decode stage of every indexing path (DataLoader
    workers here, Ray tasks in ``indexing.ray_index``). Never raises for a bad file: ``ok`` False + ``error``."""
    from engine.data.geo_read import read_chip
    from engine.data.images import load_rgb

    started = time.perf_counter()
    item: dict[str, Any] = {"ok": False, "error": "", "width": 0, "height": 0, "mask_resized": "", "pixels": blank}
    try:
        image = load_rgb(planned.path) if planned.chip is None else read_chip(planned.path, planned.chip)
        item["width"], item["height"] = image.size
        if mask.mode != "none":
            image = _masked(image, planned, item, mask, masks_dir)
        item["pixels"] = transform(image)
        item["ok"] = True
    except EngineError as error:
        item["error"] = str(error)
    except Exception as error:  # noqa: BLE001 -- one file must never stop a build: report it and go on
        item["error"] = f"{planned.path}: {type(error).__name__}: {error}"
    item["decode_seconds"] = time.perf_counter() - started
    return item


def _masked(image: Image.Image, planned: PlannedImage, item: dict[str, Any], mask: MaskOptions,
            masks_dir: Path | None) -> Image.Image:
    rgb = np.asarray(image)
    if masks_dir is None:
        foreground = estimate_foreground(rgb)
    else:
        mask_file = mask_path_for(masks_dir, planned.path)
        foreground, resized = load_mask(mask_file, image.width, image.height)
        if resized:
            item["mask_resized"] = str(mask_file)
    return Image.fromarray(apply_mask(rgb, foreground, mask))


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack pixels; keep per-item metadata as plain lists (strings do not collate into tensors)."""
    batch = {key: [item[key] for item in items] for key in items[0] if key != "pixels"}
    batch["pixels"] = torch.stack([item["pixels"] for item in items])
    return batch


def image_loader(items: ImageItems, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", collate_fn=collate_items,
                      persistent_workers=False)


def _normalised(embeddings: torch.Tensor) -> np.ndarray:
    matrix = embeddings.detach().float().cpu().numpy()
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def encode_decoded(model: Any, pixels: torch.Tensor, ok: list[bool], device: torch.device) -> np.ndarray:
    """The image-encode stage of every indexing path: (B, D) embeddings of a decoded batch; the rows of items
    that failed to decode are zeros and must not be used."""
    good = [slot for slot, fine in enumerate(ok) if fine]
    vectors = np.zeros((len(ok), int(model.config.embed_dim)), np.float32)
    if len(good) == len(ok):
        vectors[:] = encode_pixels(model, pixels, device)  # no copy of the batch when every item decoded
    elif good:
        vectors[good] = encode_pixels(model, pixels[good], device)
    return vectors


@torch.inference_mode()
def encode_pixels(model: Any, pixels: torch.Tensor, device: torch.device) -> np.ndarray:
    return _normalised(model.encode_image(pixels.to(device, non_blocking=True)))


@torch.inference_mode()
def encode_texts(model: Any, texts: list[str], batch_size: int, dim: int, text_encoder: Any = None) -> np.ndarray:
    """Caption embeddings, each distinct string once; ``text_encoder`` (``encoders.batch_text``) or the model."""
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    from engine.text_encoding import encode_distinct

    encode = text_encoder if text_encoder is not None else model.encode_text
    # Distinct strings in length order, so a batch pads to about its own length (captions of 5 to 30 words
    # padded to the longest of a random batch waste a third of the text encoder's work); deterministic, and a
    # string shared by several images still gets one embedding.
    distinct = sorted(set(texts), key=lambda text: (len(text), text))
    vectors = encode_distinct(lambda batch: _normalised(encode(batch)), distinct, batch_size)
    row_of = {text: row for row, text in enumerate(distinct)}
    return vectors[[row_of[text] for text in texts]]


def text_encoder_for(model: Any, runtime: str, threads: int | None = None) -> Any:
    """The caption encoder on ``runtime`` (``onnx`` falls back to eager when unfaithful or not exportable)."""
    from encoders.batch_text import build_batch_text_encoder

    return build_batch_text_encoder(model, runtime, threads) or build_batch_text_encoder(model, "eager")
