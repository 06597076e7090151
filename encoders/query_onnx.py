"""The single-query text encoder exported to ONNX and run by ONNX Runtime on one CPU thread (float32).

Why: for one short query the PyTorch graph is dominated by per-operator dispatch and small-matrix GEMMs;
ONNX Runtime fuses LayerNorm/GELU and its MLAS kernels handle (L × 384) · (384 × 1536) products for small L
well; its embeddings equal the eager model's to rounding (float32 throughout). Dynamic int8 quantisation was
tried and rejected: it moved the embeddings too far from float32. Measured latencies and cosines:
docs/benchmarks.md, "Measurements behind design choices".

The export uses the TorchScript-based exporter (``dynamo=False``: no ``onnxscript`` needed, 2.5 s) with a
dynamic sequence axis; the exported bytes are kept in ``encoders.onnx_cache`` for the next start. Like the
traced graphs, the result is checked by ``encoders.query_text`` against the eager model on probe queries of
1 token up to ``max_tokens`` and refused when unfaithful. Without the ``onnxruntime``/``onnx`` packages,
``available()`` is False and the caller keeps the TorchScript or eager encoder.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from encoders import onnx_cache
from encoders.onnx_session import cpu_session
from encoders.query_encoder import QUERY_THREADS, CompiledTextQueryEncoder
from encoders.text import TextBatch

OPSET = 17
ONNX_GRAPH = "text-query"  # the graph's name in encoders.onnx_cache
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"


def available() -> bool:
    try:
        import onnx  # noqa: F401  -- the exporter needs it
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxTextQueryEncoder(CompiledTextQueryEncoder):
    """The query graph in an ONNX Runtime session (float32, ``QUERY_THREADS`` threads, built by ``export_session``)."""

    kind = "onnx"
    runtime = "onnxruntime float32"

    def __init__(self, session) -> None:  # session: onnxruntime.InferenceSession
        super().__init__()
        self.session = session

    def _run(self, batch: TextBatch) -> torch.Tensor:
        feed = {INPUTS[0]: batch.input_ids.numpy().astype(np.int64, copy=False),
                INPUTS[1]: batch.attention_mask.numpy().astype(np.int64, copy=False)}
        return torch.from_numpy(self.session.run([OUTPUT], feed)[0])


def graph_spec(example: TextBatch) -> dict:
    """What, besides the model, the exported graph depends on (its ``encoders.onnx_cache`` key)."""
    return {"batch": int(example.input_ids.shape[0]), "dynamic": ["tokens"], "opset": OPSET}


def export_session(graph: torch.nn.Module, example: TextBatch, model=None, refresh: bool = False):
    """An InferenceSession for ``graph(input_ids, attention_mask)`` with a dynamic sequence length; with
    ``model``, the export is kept in (and read from, unless ``refresh``) ``encoders.onnx_cache``."""
    import onnxruntime  # noqa: F401  -- missing ONNX Runtime fails here, before the export

    def export() -> bytes:
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; correctness is checked by the caller
            torch.onnx.export(graph, (example.input_ids, example.attention_mask), buffer, input_names=list(INPUTS),
                              output_names=[OUTPUT], opset_version=OPSET, dynamo=False,
                              dynamic_axes={name: {1: "tokens"} for name in INPUTS})
        return buffer.getvalue()

    data = export() if model is None else onnx_cache.exported(model, ONNX_GRAPH, graph_spec(example), export,
                                                               refresh)
    return cpu_session(data, QUERY_THREADS)  # one short query is too small to split (query_text)
