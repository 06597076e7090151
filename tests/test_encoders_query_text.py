"""The traced single-query text encoder: equal to the eager model at every query length, refused when unfaithful."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import encoders
from encoders import query_onnx
from encoders.query_text import trace_query_encoder
from test_encoders_model import with_trained_looking_heads

# common words (one token each) first, then rare ones that split into several word pieces, so the longest
# queries pass the tokenizer's max_tokens and are truncated
WORDS = ("many green trees are planted around the white buildings next to a long straight road".split()
         + "photogrammetrically orthorectified quasiperiodic".split() * 10)


@pytest.fixture(scope="module")
def model() -> encoders.PIRModel:
    torch.manual_seed(0)
    return with_trained_looking_heads(encoders.create_model("tiny-test")).eval()


KINDS = ["float32", pytest.param("onnx", marks=pytest.mark.skipif(not query_onnx.available(),
                                                                  reason="onnxruntime not installed"))]


@pytest.mark.parametrize("kind", KINDS)
def test_traced_equals_eager_for_every_query_length(model: encoders.PIRModel, kind: str) -> None:
    assert model.lca is not None  # the LCA head is part of the traced graph
    traced = trace_query_encoder(model, kind)
    assert traced is not None and traced.check.max_difference < 1e-5 and traced.kind == kind
    lengths = set()
    with torch.inference_mode():
        for count in range(1, model.config.text.max_words + 3):
            batch = model.tokenize([" ".join(WORDS[:count])])
            lengths.add(batch.input_ids.shape[1])
            fast, eager = traced(batch), model.encode_text(batch)
            assert fast.shape == eager.shape == (1, model.config.head.embed_dim)
            assert torch.allclose(fast, eager, atol=1e-5), count
    assert min(lengths) <= 4 and max(lengths) == model.config.text.max_tokens  # short and truncated queries


@pytest.mark.parametrize("kind", KINDS)
def test_one_query_at_a_time(model: encoders.PIRModel, kind: str) -> None:
    traced = trace_query_encoder(model, kind)
    with pytest.raises(ValueError, match="one query"):
        traced(model.tokenize(["a plane", "a river"]))


def test_not_traced_in_training_mode(model: encoders.PIRModel) -> None:
    model.train()
    try:
        assert trace_query_encoder(model) is None
    finally:
        model.eval()


@pytest.mark.parametrize("kind", KINDS)
def test_a_graph_that_bakes_in_the_length_is_refused(model: encoders.PIRModel, kind: str) -> None:
    """Tracing turns int(shape) into a constant; the probe check must catch the wrong answers that follows."""
    original = model.encode_text_from_tokens

    def length_dependent(self, hidden, mask):
        half = int(hidden.shape[1]) // 2 + 1  # a Python int: frozen at the traced query's length
        return F.normalize(self.text_proj(hidden[:, :half].mean(dim=1)), dim=-1)

    model.encode_text_from_tokens = types.MethodType(length_dependent, model)
    try:
        assert trace_query_encoder(model, kind) is None
    finally:
        model.encode_text_from_tokens = original


def _eager_bfloat16_min_cosine(model: encoders.PIRModel) -> float:
    """Worst cosine over the probe queries between the float32 model and a bfloat16 copy of its text backbone,
    computed eagerly here (independently of the traced graph)."""
    import copy

    from encoders.query_text import probe_batches

    backbone = copy.deepcopy(model.text.model).to(torch.bfloat16)
    worst = 1.0
    with torch.inference_mode():
        for batch in probe_batches(model):
            hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            low = model.encode_text_from_tokens(hidden.float(), batch.attention_mask)
            worst = min(worst, float((low * model.encode_text(batch)).sum()))
    return worst


def test_bfloat16_candidate_is_held_to_its_cosine_bound(model: encoders.PIRModel, monkeypatch) -> None:
    """Both sides of the bound, whatever this CPU rounds: under a bound it meets, the candidate is built and
    reports the cosine measured independently; under a bound just above that cosine, it is refused."""
    import encoders.query_text as query_text

    measured = _eager_bfloat16_min_cosine(model)
    assert measured < 1.0 - 1e-7  # bfloat16 does round: the refusal below is a real test of the bound
    monkeypatch.setattr(query_text, "BF16_MIN_COSINE", measured - 1e-4)
    traced = trace_query_encoder(model, "bfloat16")
    assert traced is not None and traced.kind == "bfloat16"
    assert traced.check.min_cosine == pytest.approx(measured, abs=5e-5)
    assert model.text.model.dtype == torch.float32  # the model itself is left in float32
    monkeypatch.setattr(query_text, "BF16_MIN_COSINE", measured + 1e-4)
    assert trace_query_encoder(model, "bfloat16") is None


def test_auto_keeps_the_fastest_faithful_candidate(model: encoders.PIRModel, monkeypatch) -> None:
    import encoders.query_text as query_text

    speeds = {"float32": 9.0, "bfloat16": 4.0, "onnx": 6.0}
    monkeypatch.setattr(query_text, "_probe_ms", lambda encoder, probes: speeds[encoder.kind])
    monkeypatch.setattr(query_text, "BF16_MIN_COSINE", -1.0)  # let bfloat16 pass whatever this CPU rounds
    assert trace_query_encoder(model, "auto").kind == "bfloat16"
    speeds["float32"] = 1.0
    chosen = trace_query_encoder(model, "auto")
    assert chosen.kind == "float32" and chosen.check.probe_ms == 1.0 and "TorchScript float32" in chosen.describe()
    if query_onnx.available():
        speeds["onnx"] = 0.5
        chosen = trace_query_encoder(model, "auto")
        assert chosen.kind == "onnx" and "onnxruntime" in chosen.describe()
    monkeypatch.setattr(query_onnx, "available", lambda: False)  # without onnxruntime auto still works
    assert trace_query_encoder(model, "auto").kind == "float32"
    with pytest.raises(ValueError, match="text encoder"):
        trace_query_encoder(model, "float16")
