"""Batch image encoding for indexing on other runtimes than eager PyTorch, kept only when faithful.

Kinds (``engine index --image-runtime``):
* ``eager``: ``model.encode_image`` as is.
* ``channels_last``: the same modules with NHWC memory format (oneDNN's preferred layout for convolutions).
* ``torchscript``: the one-view encoder traced, frozen and ``optimize_for_inference``-d (conv+BN folding).
* ``onnx``: the backbone part (``forward_image_tokens``: vision backbone + instruction feature) exported to ONNX
  and run by ONNX Runtime; the small heads (projection, VIR) stay eager, because VIR's token selection
  (``argsort``) has no ONNX export.
Every kind computes one dihedral view per call and is averaged over ``vision.test_time_views`` by the same
``encoders.views.view_averaged`` as the model. A built runtime is compared with eager float32 on probe images
and refused below ``MIN_COSINE`` (then the caller stays eager). Which kind is fastest is measured by
``bench/encode_bench.py`` (docs/benchmarks.md, "Image encoding near the limit"); ``auto`` follows that order.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from encoders import onnx_cache
from encoders.onnx_session import cpu_session
from encoders.views import view_averaged

KINDS = ("eager", "channels_last", "torchscript", "onnx")
AUTO_ORDER = ("onnx", "channels_last", "eager")  # fastest first on the 2-core CPU VM (docs/benchmarks.md)
MIN_COSINE = 0.9999  # per probe image, against eager float32
PROBE_IMAGES = 8
OPSET = 17
ONNX_GRAPH = "image-tokens"  # the graph's name in encoders.onnx_cache


@dataclass(frozen=True)
class Fidelity:
    min_cosine: float
    probes: int


class ImageRuntime:
    """Duck-types the model for the indexing path: ``config``, ``encode_image(pixels)`` → (B, D) normalised."""

    def __init__(self, model: Any, kind: str, encode_view) -> None:
        self.model, self.kind, self._encode_view = model, kind, encode_view
        self.fidelity: Fidelity | None = None

    @property
    def config(self):
        return self.model.config

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return view_averaged(self._encode_view, pixels, self.model.config.vision.test_time_views)

    def describe(self) -> str:
        check = f", min cosine {self.fidelity.min_cosine:.6f} with eager" if self.fidelity else ""
        return f"{self.kind}{check}"


class _OneView(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image_view(pixels)


class _Tokens(nn.Module):
    """The backbone half of the image encoder with tensor outputs only (what the ONNX graph holds)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor):
        tokens = self.model.forward_image_tokens(pixels)
        if tokens.instruction_feature is None:
            return tokens.global_token, tokens.patch_tokens
        return tokens.global_token, tokens.patch_tokens, tokens.instruction_feature


def probe_pixels(model: Any, count: int = PROBE_IMAGES, seed: int = 0) -> torch.Tensor:
    """Structured synthetic tiles (stripes, blocks, noise) through the model's own transform."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    transform = model.image_transform(train=False)
    side = 256
    y, x = np.mgrid[0:side, 0:side]
    images = []
    for number in range(count):
        period = 6 + 5 * number
        base = 127 + 100 * np.sin(2 * np.pi * (x + number * y / 5) / period)
        picture = np.stack([base, np.roll(base, 17 * number, axis=0), 255 - base], axis=-1)
        top, left = rng.integers(0, side // 2, size=2)
        picture[top:top + side // 3, left:left + side // 3] = rng.integers(0, 256, size=3)
        picture = np.clip(picture + rng.normal(0, 12, picture.shape), 0, 255).astype(np.uint8)
        images.append(transform(Image.fromarray(picture)))
    return torch.stack(images)


def build_image_runtime(model: Any, kind: str, probes: torch.Tensor | None = None,
                        threads: int | None = None) -> ImageRuntime | None:
    """The runtime of this kind, checked against eager float32 on ``probes``; None when it cannot be built or is
    not faithful (cosine < MIN_COSINE on any probe). ``eager`` is always returned. CPU models only for the
    compiled kinds (on CUDA the eager model is what runs)."""
    if kind not in KINDS:
        raise ValueError(f"image runtime must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "eager":
        return ImageRuntime(model, "eager", model.encode_image_view)
    if model.device.type != "cpu":
        return None
    probes = probe_pixels(model) if probes is None else probes
    with torch.inference_mode():
        reference = model.encode_image_view(probes)
    if kind != "onnx":
        return _checked(model, kind, probes, reference, threads, refresh=False)
    return onnx_cache.checked(model, ONNX_GRAPH, _onnx_spec(probes),
                              lambda refresh: _checked(model, kind, probes, reference, threads, refresh))


def _checked(model: Any, kind: str, probes: torch.Tensor, reference: torch.Tensor, threads: int | None,
             refresh: bool) -> ImageRuntime | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer/exporter chatter; correctness is checked below
            runtime = _build(model, kind, probes, threads, refresh)
            with torch.inference_mode():
                output = runtime._encode_view(probes)
    except Exception:  # noqa: BLE001 -- any export failure means: not this kind (eager is always right)
        return None
    if output.shape != reference.shape:
        return None
    cosine = float(torch.nn.functional.cosine_similarity(output.float(), reference.float(), dim=-1).min())
    if not cosine >= MIN_COSINE:
        return None
    runtime.fidelity = Fidelity(cosine, len(probes))
    return runtime


def best_image_runtime(model: Any, requested: str = "auto", threads: int | None = None) -> ImageRuntime:
    """``requested`` if faithful, else eager; ``auto`` tries ``AUTO_ORDER`` and keeps the first faithful one."""
    order = AUTO_ORDER if requested == "auto" else (requested,)
    probes = probe_pixels(model) if model.device.type == "cpu" and order != ("eager",) else None
    for kind in order:
        runtime = build_image_runtime(model, kind, probes, threads)
        if runtime is not None:
            return runtime
    return build_image_runtime(model, "eager")


def _build(model: Any, kind: str, probes: torch.Tensor, threads: int | None, refresh: bool = False) -> ImageRuntime:
    if kind == "channels_last":
        fast = copy.deepcopy(model).to(memory_format=torch.channels_last)

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return fast.encode_image_view(pixels.contiguous(memory_format=torch.channels_last))

        return ImageRuntime(model, kind, encode)
    if kind == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(_OneView(model).eval(), (probes[:2],), check_trace=False)
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return graph(pixels)

        return ImageRuntime(model, kind, encode)
    session, outputs = _onnx_session(model, probes[:2], threads, refresh)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        values = session.run(outputs, {"pixels": pixels.detach().cpu().numpy().astype(np.float32, copy=False)})
        tensors = [torch.from_numpy(value) for value in values]
        instruction = tensors[2] if len(tensors) == 3 else None
        with torch.inference_mode():
            return model.encode_image_from_tokens(tensors[0], tensors[1], instruction)

    return ImageRuntime(model, kind, encode)


def _onnx_spec(example: torch.Tensor) -> dict[str, Any]:
    return {"pixels": list(example.shape[1:]), "opset": OPSET}


def _onnx_session(model: Any, example: torch.Tensor, threads: int | None, refresh: bool = False):
    import onnxruntime  # noqa: F401  -- missing ONNX Runtime fails here, before the export

    module = _Tokens(model).eval()
    with torch.no_grad():
        count = len(module(example))
    outputs = ["global_token", "patch_tokens", "instruction_feature"][:count]

    def export() -> bytes:
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(module, (example,), buffer, input_names=["pixels"], output_names=outputs,
                              opset_version=OPSET, dynamo=False,
                              dynamic_axes={name: {0: "batch"} for name in ["pixels", *outputs]})
        return buffer.getvalue()

    data = onnx_cache.exported(model, ONNX_GRAPH, _onnx_spec(example), export, refresh)
    return cpu_session(data, threads or torch.get_num_threads() or (os.cpu_count() or 1)), outputs
