"""A frozen, traced text encoder for single queries: the same weights and maths as ``encode_text``, less overhead.

Why: a warm search server spends most of a text query in the text encoder, and for one short query on a CPU
that time is per-operator overhead (Python dispatch, a BLAS call per Linear that re-reads unpacked weights),
not arithmetic. ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference`` turns the backbone and the LCA
head into one graph with pre-packed (oneDNN) Linear weights. Measured on a 2-core EPYC VM with the shipped
model: 10 ms per query instead of 17 ms, identical embeddings to float32 rounding (docs/benchmarks.md).

Threads: the traced graph runs with one intra-op thread (``QUERY_THREADS``). A 5-token query is too small to
split, and a second OpenMP worker that has gone to sleep between queries must be woken for every operator: on
the 2-core VM, queries 5 ms apart took 21 ms p50 / 91 ms p95 with two threads and 13 ms / 15 ms with one
(back to back, two threads were only ~1 ms faster). The previous thread count is restored after each call, so
image encoding and reranking keep both cores.

Safety: tracing records one execution, so a graph that baked in a shape would silently give wrong answers for
other query lengths. ``trace_query_encoder`` therefore checks the traced graph against the eager model on
probe queries of several token lengths (1 token up to ``max_tokens``) and refuses it (returning ``None``, so the
caller keeps the eager path) when any embedding differs by more than ``tolerance``. Only batch size 1 without
padding is traced: that is what a query is, and it keeps the graph free of padding-dependent branches.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from encoders.model import PIRModel
from encoders.text import TextBatch

PROBE_WORDS = "dense residential area with many houses and green trees beside a wide road"
# words of several word pieces each: a probe of them reaches the tokenizer's max_tokens (truncation)
LONG_PROBE_WORDS = "photogrammetrically orthorectified quasiperiodic"
DEFAULT_TOLERANCE = 1e-4
QUERY_THREADS = 1


class _TextQueryGraph(nn.Module):
    """input ids (1, L) + mask (1, L) -> (1, D) normalised embedding, through the model's own modules."""

    def __init__(self, model: PIRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.text(TextBatch(input_ids, attention_mask))
        return self.model.encode_text_from_tokens(hidden, attention_mask)


@dataclass
class TracedTextQueryEncoder:
    """Call with one TextBatch of batch size 1; returns its (1, D) float32 embedding."""

    graph: torch.jit.ScriptModule
    max_difference: float  # worst |traced - eager| over the probe queries, recorded for diagnostics
    threads: int = QUERY_THREADS

    def __call__(self, batch: TextBatch) -> torch.Tensor:
        if batch.input_ids.shape[0] != 1:
            raise ValueError("the traced query encoder takes one query at a time")
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


def trace_query_encoder(model: PIRModel, tolerance: float = DEFAULT_TOLERANCE) -> TracedTextQueryEncoder | None:
    """The traced encoder, or None when this model cannot be traced faithfully (the caller stays eager).

    The model must be in eval mode on the CPU (tracing on CUDA gains little: kernels there are launched
    asynchronously and the overhead this removes is hidden)."""
    if model.training or model.device.type != "cpu":
        return None
    probes = probe_batches(model)
    graph_module = _TextQueryGraph(model).eval()
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # tracing touches config attributes that make transformers log noise
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; correctness is checked below
            example = probes[1]
            traced = torch.jit.trace(graph_module, (example.input_ids, example.attention_mask), check_trace=False)
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            worst = 0.0
            for batch in probes:
                eager = model.encode_text(batch)
                fast = graph(batch.input_ids, batch.attention_mask)
                if fast.shape != eager.shape:
                    return None
                worst = max(worst, float((fast - eager).abs().max()))
    except Exception:  # noqa: BLE001 -- any tracing failure means: keep the eager path, which is always right
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    if worst > tolerance:
        return None
    return TracedTextQueryEncoder(graph, worst)
