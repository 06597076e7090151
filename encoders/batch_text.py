"""Caption encoding for indexing in ONNX Runtime: the model's text graph with dynamic batch and length axes.

Why: captions cost more than images when an archive has several per tile (five 20-token captions through a
6-layer MiniLM are ~10x the FLOPs of one EfficientNet-Lite0 pass), and ONNX Runtime runs that graph faster
than eager PyTorch on CPU (as for the single-query encoder, ``encoders.query_onnx``). The graph is the
query encoder's (``query_text._TextQueryGraph``: backbone + mean pooling + projection + LCA), exported with a
padded example so the attention mask path is part of the graph, and checked against ``model.encode_text`` on
padded probe batches of several lengths: every probe must keep cosine >= ``MIN_COSINE`` and differ by at most
``MAX_DIFFERENCE`` per component, else the builder returns None and the caller stays eager.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch

from encoders import onnx_cache
from encoders.onnx_session import cpu_session

MIN_COSINE = 0.9999
MAX_DIFFERENCE = 1e-4
KINDS = ("eager", "onnx")
PROBE_TEXTS = ("airport", "dense residential area with many houses and green trees beside a wide road",
               "a river", "many planes are parked next to a long runway near some green meadows and buildings",
               "photogrammetrically orthorectified quasiperiodic " * 12, "two tennis courts")
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"
OPSET = 17
ONNX_GRAPH = "text-batch"  # the graph's name in encoders.onnx_cache
ONNX_SPEC = {"inputs": list(INPUTS), "dynamic": ["batch", "tokens"], "opset": OPSET}


class BatchTextEncoder:
    """texts -> (B, D) float32 L2-normalised, like ``model.encode_text``; ``kind`` says what runs it."""

    def __init__(self, model, kind: str, session=None) -> None:
        self.model, self.kind, self.session = model, kind, session
        self.min_cosine: float | None = None

    def __call__(self, texts: list[str]) -> torch.Tensor:
        if self.session is None:
            return self.model.encode_text(texts)
        return self.encode_batch(self.model.tokenize(texts))

    def encode_batch(self, batch) -> torch.Tensor:
        """An already tokenized (padded) TextBatch -> (B, D)."""
        if self.session is None:
            return self.model.encode_text(batch)
        feed = {INPUTS[0]: batch.input_ids.numpy().astype(np.int64, copy=False),
                INPUTS[1]: batch.attention_mask.numpy().astype(np.int64, copy=False)}
        return torch.from_numpy(self.session.run([OUTPUT], feed)[0])

    def describe(self) -> str:
        check = f", min cosine {self.min_cosine:.6f} with eager" if self.min_cosine is not None else ""
        return f"{self.kind}{check}"


def build_batch_text_encoder(model, kind: str = "onnx", threads: int | None = None) -> BatchTextEncoder | None:
    """The faithful encoder of ``kind`` (``eager`` always), or None when ONNX export/Runtime fails or differs."""
    if kind not in KINDS:
        raise ValueError(f"text runtime must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "eager":
        return BatchTextEncoder(model, "eager")
    if model.device.type != "cpu":
        return None
    return onnx_cache.checked(model, ONNX_GRAPH, ONNX_SPEC, lambda refresh: _checked(model, threads, refresh))


def _checked(model, threads: int | None, refresh: bool) -> BatchTextEncoder | None:
    try:
        session = _session(model, threads, refresh)
        encoder = BatchTextEncoder(model, "onnx", session)
        with torch.inference_mode():
            probes = [list(PROBE_TEXTS), list(PROBE_TEXTS[:2]), [PROBE_TEXTS[2]]]
            pairs = [(encoder(texts), model.encode_text(texts)) for texts in probes]
    except Exception:  # noqa: BLE001 -- any export/runtime failure means: stay eager
        return None
    cosine = min(float(torch.nn.functional.cosine_similarity(fast, slow, dim=-1).min()) for fast, slow in pairs)
    difference = max(float((fast - slow).abs().max()) for fast, slow in pairs)
    if not (cosine >= MIN_COSINE and difference <= MAX_DIFFERENCE):
        return None
    encoder.min_cosine = cosine
    return encoder


def _session(model, threads: int | None, refresh: bool = False):
    import onnxruntime  # noqa: F401  -- missing ONNX Runtime fails here, before the export

    def export() -> bytes:
        from encoders.query_text import _TextQueryGraph

        graph = _TextQueryGraph(model, model.text.model).eval()
        example = model.tokenize(list(PROBE_TEXTS[:2]))  # padded: the mask path must be in the graph
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                torch.onnx.export(graph, (example.input_ids, example.attention_mask), buffer,
                                  input_names=list(INPUTS), output_names=[OUTPUT], opset_version=OPSET,
                                  dynamo=False, dynamic_axes={**{name: {0: "batch", 1: "tokens"} for name in INPUTS},
                                                              OUTPUT: {0: "batch"}})
            finally:
                hf_logging.set_verbosity(verbosity)
        return buffer.getvalue()

    data = onnx_cache.exported(model, ONNX_GRAPH, ONNX_SPEC, export, refresh)
    return cpu_session(data, threads or torch.get_num_threads() or (os.cpu_count() or 1))
