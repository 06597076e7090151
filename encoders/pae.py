"""PIR's progressive attention heads: VIR (Spatial-PAE on instruction-filtered image tokens) and LCA (text).

Both return a *local* correction in embed_dim; the model adds it to the projected global token and normalises:
v = normalise(v_cls + head(first output token)), t = normalise(t_cls + head(first output token)).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from encoders.attention import AttentionBlock
from encoders.model_config import PIRHeadConfig
from encoders.par import ParSettings, ParStats, reinforce


@dataclass(frozen=True)
class TokenSelection:
    """Kept tokens sorted by belief (B, r_k, D), their positions in the 1 + N input (B, r_k), all beliefs (B, 1+N)."""

    tokens: torch.Tensor
    indices: torch.Tensor
    belief: torch.Tensor


def select_tokens(tokens: torch.Tensor, instruction: torch.Tensor, keep: int) -> TokenSelection:
    """Belief = softmax over tokens of <instruction, token>; keep the ``keep`` most believed, most believed first.

    Position 0 (the global token) competes like any other token, as in PIR.
    """
    if keep > tokens.shape[1]:
        raise ValueError(f"cannot keep {keep} of {tokens.shape[1]} tokens")
    belief = torch.einsum("bnd,bd->bn", tokens, instruction).softmax(dim=-1)
    indices = belief.argsort(dim=-1, descending=True, stable=True)[:, :keep]
    kept = tokens.gather(1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return TokenSelection(kept, indices, belief)


def zero_initialised_linear(dim: int) -> nn.Linear:
    """The output head of VIR/LCA, starting at zero.

    v = v_cls + head(...) then begins exactly as the projection-only model, and the refinement is learned as a
    residual correction: a random head would first add the untrained attention stack's noise to good global
    embeddings, which small data sets (UCM: 1,680 training images) may never train away.
    """
    layer = nn.Linear(dim, dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class VisualInstructionRefiner(nn.Module):
    """VIR: filter tokens by the scene instruction, then n_v blocks of self-attention + instruction cross-attention."""

    def __init__(self, config: PIRHeadConfig, instruction_width: int) -> None:
        super().__init__()
        dim = config.embed_dim
        self.keep = config.r_k
        self.instruction_proj = nn.Linear(instruction_width, dim)
        self.self_blocks = nn.ModuleList(
            AttentionBlock(dim, config.heads, config.attn_dropout) for _ in range(config.n_v)
        )
        self.cross_blocks = nn.ModuleList(
            AttentionBlock(dim, config.heads, config.attn_dropout) for _ in range(config.n_v)
        )
        self.query_maps = nn.ModuleList(nn.Linear(dim, dim) for _ in range(config.n_v))
        self.head = zero_initialised_linear(dim)
        self.last_selection: TokenSelection | None = None
        self._par: tuple[torch.Tensor, ParSettings] | None = None
        self.last_par_stats: ParStats | None = None

    @contextmanager
    def reinforcing(self, references: torch.Tensor, settings: ParSettings) -> Iterator[None]:
        """PAR training for the calls inside: sample i's last self-attention is reinforced against sample
        ``references[i]`` of the same batch (encoders/par.py); -1 = no reference."""
        self._par = (references, settings)
        try:
            yield
        finally:
            self._par = None

    def forward(self, tokens: torch.Tensor, instruction_feature: torch.Tensor) -> torch.Tensor:
        """tokens: projected [global, patches] (B, 1+N, D); instruction_feature (B, F) -> local term (B, D)."""
        instruction = self.instruction_proj(instruction_feature)
        selection = select_tokens(tokens, instruction, self.keep)
        self.last_selection = selection
        last_attention = self.self_blocks[-1].attention
        if self._par is not None:
            references, settings = self._par

            def reinforced(attention: torch.Tensor) -> torch.Tensor:
                result, self.last_par_stats = reinforce(attention, selection.indices, tokens[:, 0], references,
                                                        tokens.shape[1], settings)
                return result

            last_attention.reinforce = reinforced
        try:
            x = selection.tokens
            for self_block, cross_block, query_map in zip(self.self_blocks, self.cross_blocks, self.query_maps):
                x = self_block(x)
                queries = query_map(instruction).unsqueeze(1).expand(-1, x.shape[1], -1)
                x = cross_block(x, queries=queries)
        finally:
            last_attention.reinforce = None
        return self.head(x[:, 0])


class LanguageCycleAttention(nn.Module):
    """LCA: n_t cycles of self-attention, then cross-attention queried by a linear map of the previous cycle."""

    def __init__(self, config: PIRHeadConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.self_blocks = nn.ModuleList(
            AttentionBlock(dim, config.heads, config.attn_dropout) for _ in range(config.n_t)
        )
        self.cross_blocks = nn.ModuleList(
            AttentionBlock(dim, config.heads, config.attn_dropout) for _ in range(config.n_t)
        )
        self.query_maps = nn.ModuleList(nn.Linear(dim, dim) for _ in range(config.n_t))
        self.head = zero_initialised_linear(dim)
        self.readout = config.lca_readout

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens: projected hidden states (B, L, D), mask (B, L) with 1 = real token -> local term (B, D).

        Readout ``first``: the last cycle's output at position 0 (PIR); ``mean``: its masked mean over the real
        tokens, the same pooling as a mean-pooled t_cls."""
        x = tokens
        for self_block, cross_block, query_map in zip(self.self_blocks, self.cross_blocks, self.query_maps):
            attended = self_block(x, key_mask=mask)
            x = cross_block(attended, queries=query_map(x), key_mask=mask)
        if self.readout == "mean":
            return self.head(masked_mean(x, mask))
        return self.head(x[:, 0])


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) tokens, (B, L) mask with 1 = real token -> (B, D) mean over the real tokens."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
