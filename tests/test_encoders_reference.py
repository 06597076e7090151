"""VIR and LCA against an independent re-implementation written from PIR's formulas (REFERENCE.md).

The reference below is deliberately naive: per head, per query row, with its own softmax, LayerNorm and GELU
from the formulas, reading only the modules' weights. The heads' output layers start at zero, so they are given
random weights first; otherwise every embedding would equal the projected global token whatever VIR/LCA do.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import encoders
from encoders.model_config import load_config

EPS = 1e-5


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.t() + layer.bias


def _layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _attention(module, queries: torch.Tensor, keys_values: torch.Tensor, mask: list[bool] | None) -> torch.Tensor:
    """One sample: queries (Lq, D) attend over keys_values (Lk, D); a head at a time, a row at a time."""
    q, k, v = _linear(module.query, queries), _linear(module.key, keys_values), _linear(module.value, keys_values)
    heads, width = module.heads, module.head_dim
    out = torch.zeros(queries.shape[0], heads * width, dtype=queries.dtype)
    for head in range(heads):
        cols = slice(head * width, (head + 1) * width)
        for row in range(queries.shape[0]):
            allowed = [j for j in range(keys_values.shape[0]) if mask is None or mask[j]]
            scores = torch.stack([q[row, cols] @ k[j, cols] / math.sqrt(width) for j in allowed])
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            out[row, cols] = sum(w * v[j, cols] for w, j in zip(weights, allowed))
    return _linear(module.output, out)


def _block(block, tokens: torch.Tensor, queries: torch.Tensor | None = None,
           mask: list[bool] | None = None) -> torch.Tensor:
    """x = LN(tokens + attention(queries or tokens → tokens)); x = LN(x + MLP(x)): keys, values and the residual
    path are the tokens; only the queries come from elsewhere in a cross block."""
    attended = _attention(block.attention, tokens if queries is None else queries, tokens, mask)
    x = _layer_norm(block.norm_attention, tokens + attended)
    first, norm, _, second = block.mlp
    hidden = _linear(second, _gelu(_layer_norm(norm, _linear(first, x))))
    return _layer_norm(block.norm_mlp, x + hidden)


def reference_vir(vir, tokens: torch.Tensor, instruction_feature: torch.Tensor) -> torch.Tensor:
    """One sample. tokens (1+N, D) projected [global, patches]; instruction feature (F,) -> local term (D,)."""
    instruction = _linear(vir.instruction_proj, instruction_feature)
    logits = [float(token @ instruction) for token in tokens]
    top = max(logits)
    belief = [math.exp(value - top) for value in logits]
    order = sorted(range(len(tokens)), key=lambda n: (-belief[n], n))[:vir.keep]
    x = tokens[order]
    for self_block, cross_block, query_map in zip(vir.self_blocks, vir.cross_blocks, vir.query_maps):
        x = _block(self_block, x)
        queries = _linear(query_map, instruction).expand(x.shape[0], -1)
        x = _block(cross_block, x, queries=queries)
    return _linear(vir.head, x[0])


def reference_lca(lca, tokens: torch.Tensor, length: int, readout: str) -> torch.Tensor:
    """One caption: tokens (L, D) of which the first ``length`` are real -> local term (D,)."""
    mask = [j < length for j in range(tokens.shape[0])]
    x = tokens
    for self_block, cross_block, query_map in zip(lca.self_blocks, lca.cross_blocks, lca.query_maps):
        attended = _block(self_block, x, mask=mask)
        x = _block(cross_block, attended, queries=_linear(query_map, x), mask=mask)
    summary = x[0] if readout == "first" else x[:length].mean(dim=0)
    return _linear(lca.head, summary)


def _model(lca_readout: str = "first") -> encoders.PIRModel:
    config = load_config("tiny-test")
    config = config.replace(head=dataclasses.replace(config.head, lca_readout=lca_readout))
    torch.manual_seed(3)
    model = encoders.create_model(config).double().eval()
    with torch.no_grad():
        for refiner in (model.vir, model.lca):
            torch.nn.init.normal_(refiner.head.weight, std=0.5)
            torch.nn.init.normal_(refiner.head.bias, std=0.1)
    return model


def test_vir_matches_the_reference() -> None:
    model = _model()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, model.config.num_vision_tokens, model.config.embed_dim, generator=generator,
                         dtype=torch.float64)
    feature = torch.randn(3, model.instruction.feature_dim, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        got = model.vir(tokens, feature)
        expected = torch.stack([reference_vir(model.vir, tokens[b], feature[b]) for b in range(3)])
    assert got.abs().max() > 0.1  # non-trivial output
    torch.testing.assert_close(got, expected, rtol=EPS, atol=EPS)


@pytest.mark.parametrize("readout", ["first", "mean"])
def test_lca_matches_the_reference_with_padding(readout: str) -> None:
    model = _model(readout)
    lengths = [7, 3, 5]
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 7, model.config.embed_dim, generator=generator, dtype=torch.float64)
    mask = torch.tensor([[1 if j < n else 0 for j in range(7)] for n in lengths])
    with torch.no_grad():
        got = model.lca(tokens, mask)
        expected = torch.stack([reference_lca(model.lca, tokens[b], lengths[b], readout) for b in range(3)])
    assert got.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=EPS, atol=EPS)


def test_mean_readout_embeds_with_the_same_masked_mean_as_the_global_token() -> None:
    """text.pooling mean + head.lca_readout mean: t = normalise(proj(mean of real hidden states) + head(mean of
    LCA's real outputs)); padding a caption in a batch does not change it."""
    config = load_config("tiny-test")
    config = config.replace(text=dataclasses.replace(config.text, pooling="mean"),
                            head=dataclasses.replace(config.head, lca_readout="mean"))
    torch.manual_seed(4)
    model = encoders.create_model(config).double().eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.lca.head.weight, std=0.5)
    captions = ["a plane", "many green trees are planted around the white buildings next to a road"]
    with torch.no_grad():
        tokens = model.forward_text_tokens(captions)
        got = model.encode_text_from_tokens(tokens.hidden.double(), tokens.mask)
        alone = model.encode_text_from_tokens(*(lambda t: (t.hidden.double(), t.mask))(
            model.forward_text_tokens(captions[:1])))
        for row in range(2):
            length = int(tokens.mask[row].sum())
            hidden = tokens.hidden[row, :length].double()
            projected = model.text_proj(tokens.hidden[row].double())
            local = reference_lca(model.lca, projected, length, "mean")
            expected = torch.nn.functional.normalize(model.text_proj(hidden.mean(dim=0)) + local, dim=-1)
            torch.testing.assert_close(got[row], expected.float(), rtol=EPS, atol=EPS)
    torch.testing.assert_close(got[0], alone[0], rtol=EPS, atol=EPS)


def test_lca_readout_is_a_checked_config_field_left_out_of_old_fingerprints() -> None:
    from engine.errors import ConfigError

    config = load_config("tiny-test")
    assert "lca_readout" not in config.to_json()  # at "first": models saved before the field keep their hash
    mean = config.replace(head=dataclasses.replace(config.head, lca_readout="mean"))
    assert '"lca_readout":"mean"' in mean.to_json()
    from encoders.model_config import config_from_dict

    assert config_from_dict(json.loads(mean.to_json())).head.lca_readout == "mean"
    with pytest.raises(ConfigError, match="head.lca_readout"):
        config.replace(head=dataclasses.replace(config.head, lca_readout="last"))
