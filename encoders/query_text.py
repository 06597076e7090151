"""A frozen, traced text encoder for single queries: the same weights and maths as ``encode_text``, less overhead.

Why: a warm search server spends most of a text query in the text encoder, and for one short query on a CPU
that time is per-operator overhead and reading ~40 MB of float32 backbone weights, not arithmetic.
``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference`` turns the backbone and the LCA head into one graph
with pre-packed (oneDNN) Linear weights.

Kinds: ``onnx`` exports the same graph to ONNX Runtime (float32, ``encoders.query_onnx``), the fastest here
when ``onnxruntime`` is installed. ``float32`` reproduces ``encode_text`` to rounding (≤ 1e-4 per component). ``bfloat16`` runs the
text backbone with bfloat16 weights (half the memory traffic; the heads stay float32) and is accepted only when
every probe embedding keeps cosine ≥ ``BF16_MIN_COSINE`` with the float32 model. ``auto`` builds every
available kind, times them on the probes and keeps the fastest: on CPUs without native bfloat16 and without
onnxruntime that is float32. The measured table (``python -m bench.text_precision_check``, re-run for each
shipped model) is in docs/ENCODERS.md.

Threads: the graph runs with one intra-op thread (``QUERY_THREADS``). A 5-token query is too small to split,
and a second OpenMP worker that has gone to sleep between queries must be woken for every operator (measured
p50/p95 with one and two threads: docs/benchmarks.md, "Measurements behind design choices"). The previous thread count is restored after each call, so image
encoding and reranking keep both cores.

Safety: tracing records one execution, so a graph that baked in a shape would silently give wrong answers for
other query lengths. Every candidate graph is therefore checked against the eager float32 model on probe
queries of several token lengths (1 token up to ``max_tokens``) and refused when it misses its bound;
``trace_query_encoder`` returns ``None`` when no candidate passes, and the caller keeps the eager path. Only
batch size 1 without padding is traced: that is what a query is.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
from torch import nn

from encoders.model import PIRModel
from encoders.query_encoder import QUERY_THREADS, CompiledTextQueryEncoder, FidelityCheck
from encoders.text import TextBatch

PROBE_WORDS = "dense residential area with many houses and green trees beside a wide road"
# words of several word pieces each: a probe of them reaches the tokenizer's max_tokens (truncation)
LONG_PROBE_WORDS = "photogrammetrically orthorectified quasiperiodic"
DEFAULT_TOLERANCE = 1e-4
BF16_MIN_COSINE = 0.9995
TEXT_ENCODER_KINDS = ("auto", "onnx", "float32", "bfloat16")  # engine serve --text-encoder, besides eager
FLOAT32_KINDS = ("onnx", "float32")  # held to DEFAULT_TOLERANCE; bfloat16 to BF16_MIN_COSINE
TIMING_ROUNDS = 5


class _TextQueryGraph(nn.Module):
    """input ids (1, L) + mask (1, L) -> (1, D) normalised embedding, through the model's own modules."""

    def __init__(self, model: PIRModel, backbone: nn.Module) -> None:
        super().__init__()
        self.model, self.backbone = model, backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.model.encode_text_from_tokens(hidden.float(), attention_mask)


class TracedTextQueryEncoder(CompiledTextQueryEncoder):
    """A frozen TorchScript graph, run with ``threads`` intra-op threads (the caller's count is restored)."""

    def __init__(self, graph: torch.jit.ScriptModule, kind: str, threads: int = QUERY_THREADS) -> None:
        super().__init__()
        self.graph, self.kind, self.threads = graph, kind, threads  # kind: the text backbone's weight dtype
        self.runtime = f"TorchScript {kind}"

    def _run(self, batch: TextBatch) -> torch.Tensor:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                return self.graph(batch.input_ids, batch.attention_mask)
        finally:
            torch.set_num_threads(previous)


def probe_batches(model: PIRModel) -> list[TextBatch]:
    """Single queries of 1 token, a few tokens, and the longest the tokenizer allows."""
    words = PROBE_WORDS.split()
    longest = " ".join((LONG_PROBE_WORDS.split() * model.config.text.max_words)[: model.config.text.max_words])
    texts = [words[0], " ".join(words[:4]), " ".join(words), longest]
    return [model.tokenize([text]) for text in texts]


def trace_query_encoder(model: PIRModel, kind: str = "float32",
                        tolerance: float = DEFAULT_TOLERANCE) -> CompiledTextQueryEncoder | None:
    """The compiled encoder of this kind (the fastest faithful one for ``auto``), or None: the caller stays eager.

    The model must be in eval mode on the CPU (on CUDA kernels launch asynchronously and the overhead this
    removes is hidden)."""
    if kind not in TEXT_ENCODER_KINDS:
        raise ValueError(f"text encoder must be one of {', '.join(TEXT_ENCODER_KINDS)}, got {kind!r}")
    if model.training or model.device.type != "cpu":
        return None
    from transformers.utils import logging as hf_logging

    from encoders import query_onnx

    probes = probe_batches(model)
    with torch.no_grad():
        eager = [model.encode_text(batch) for batch in probes]
    wanted = (("onnx",) if query_onnx.available() else ()) + ("float32", "bfloat16") if kind == "auto" else (kind,)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # tracing touches config attributes that make transformers log noise
    try:
        candidates = [built for candidate in wanted
                      if (built := _build_once_more(model, candidate, probes, eager, tolerance)) is not None]
    finally:
        hf_logging.set_verbosity(verbosity)
    return min(candidates, key=lambda encoder: encoder.check.probe_ms) if candidates else None


def _build_once_more(model: PIRModel, kind: str, probes: list[TextBatch], eager: list[torch.Tensor],
                     tolerance: float) -> CompiledTextQueryEncoder | None:
    """``_build``; an ONNX graph from ``encoders.onnx_cache`` that fails its check is exported anew, once."""
    from encoders import onnx_cache, query_onnx

    if kind != "onnx":
        return _build(model, kind, probes, eager, tolerance)
    return onnx_cache.checked(model, query_onnx.ONNX_GRAPH, query_onnx.graph_spec(probes[1]),
                              lambda refresh: _build(model, kind, probes, eager, tolerance, refresh=refresh))


def _build(model: PIRModel, kind: str, probes: list[TextBatch], eager: list[torch.Tensor],
           tolerance: float, refresh: bool = False) -> CompiledTextQueryEncoder | None:
    from encoders import query_onnx

    backbone = model.text.model
    if kind == "bfloat16":
        backbone = copy.deepcopy(backbone).to(torch.bfloat16)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; correctness is checked below
            example = probes[1]
            module = _TextQueryGraph(model, backbone).eval()
            if kind == "onnx":
                session = query_onnx.export_session(module, example, model, refresh)
                encoder = query_onnx.OnnxTextQueryEncoder(session)
            else:
                traced = torch.jit.trace(module, (example.input_ids, example.attention_mask), check_trace=False)
                graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
                encoder = TracedTextQueryEncoder(graph, kind)
            outputs = [encoder(batch) for batch in probes]
    except Exception:  # noqa: BLE001 -- any tracing/export failure means: not this candidate (eager is always right)
        return None
    if any(fast.shape != slow.shape for fast, slow in zip(outputs, eager)):
        return None
    worst = max(float((fast - slow).abs().max()) for fast, slow in zip(outputs, eager))
    cosine = min(float((fast * slow).sum(dim=-1).min()) for fast, slow in zip(outputs, eager))
    faithful = worst <= tolerance if kind in FLOAT32_KINDS else cosine >= BF16_MIN_COSINE
    if not faithful:
        return None
    encoder.check = FidelityCheck(worst, cosine, _probe_ms(encoder, probes))
    return encoder


def _probe_ms(encoder, probes: list[TextBatch]) -> float:
    """Median milliseconds per probe query after one warm-up pass (how ``auto`` picks a kind)."""
    times = []
    for round_number in range(TIMING_ROUNDS + 1):
        for batch in probes:
            started = time.perf_counter()
            encoder(batch)
            if round_number:
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
