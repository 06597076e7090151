"""Multi-head attention and the residual attention block used by VIR's Spatial-PAE and by LCA.

The attention is written out (not ``scaled_dot_product_attention``) so that the per-head Q, K, V and the
attention map of any layer can be recorded for inspection and reranking. Key padding masks are explicit:
padded text tokens are never attended to (the PIR reference code forgets this, which makes a caption's
embedding depend on the longest caption in its batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

MLP_EXPANSION = 2  # hidden width of the block MLP relative to embed_dim, as in PIR


@dataclass(frozen=True)
class AttentionRecord:
    """Per-head tensors of one attention call: Q (B, h, Lq, d), K/V (B, h, Lk, d), map (B, h, Lq, Lk)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attention: torch.Tensor
    key_mask: torch.Tensor | None = None  # (B, Lk) bool, True = real token


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with separate Q/K/V projections and an output projection."""

    def __init__(self, embed_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = embed_dim // heads
        self.query = nn.Linear(embed_dim, embed_dim)
        self.key = nn.Linear(embed_dim, embed_dim)
        self.value = nn.Linear(embed_dim, embed_dim)
        self.output = nn.Linear(embed_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.record = False
        self.last_record: AttentionRecord | None = None
        # set by PAR training (encoders/par.py) for one call: post-softmax map (B, h, Lq, Lk) -> reinforced map
        self.reinforce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(
        self, queries: torch.Tensor, keys_values: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """queries (B, Lq, D), keys_values (B, Lk, D), key_mask (B, Lk) bool/int with 1 = attend."""
        q = self._split(self.query(queries))
        k = self._split(self.key(keys_values))
        v = self._split(self.value(keys_values))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        mask = None
        if key_mask is not None:
            mask = key_mask.bool()
            scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attention = scores.softmax(dim=-1)
        if self.reinforce is not None:
            attention = self.reinforce(attention)
        if self.record:
            self.last_record = AttentionRecord(q.detach(), k.detach(), v.detach(), attention.detach(), mask)
        mixed = self.dropout(attention) @ v
        batch, _, length, _ = mixed.shape
        return self.output(mixed.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)


class AttentionBlock(nn.Module):
    """Post-norm block: x = LN(x + drop(attn)); x = LN(x + drop(MLP(x))).

    Self-attention when no ``queries`` are given. In cross mode (PIR's CroSA) the queries come from elsewhere
    (the instruction, or a linear map of the previous LCA cycle) while keys, values and the residual path are the
    tokens; queries and tokens therefore have the same length.
    """

    def __init__(self, embed_dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(embed_dim, heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim * MLP_EXPANSION),
            nn.LayerNorm(embed_dim * MLP_EXPANSION),
            nn.GELU(),
            nn.Linear(embed_dim * MLP_EXPANSION, embed_dim),
        )
        self.norm_attention = nn.LayerNorm(embed_dim)
        self.norm_mlp = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, tokens: torch.Tensor, queries: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if queries is None:
            queries = tokens
        elif queries.shape != tokens.shape:
            raise ValueError(f"cross-attention queries {tuple(queries.shape)} must match tokens {tuple(tokens.shape)}")
        x = self.norm_attention(tokens + self.dropout(self.attention(queries, tokens, key_mask)))
        return self.norm_mlp(x + self.dropout(self.mlp(x)))
