"""PAR training: Pairwise Attention Reinforcement on VIR's last self-attention block (``engine train --par``).

The PAR paper (clock-drawing study, ../shared/REFERENCE.md) pairs each training image with a reference image of
its class and compares them inside the last attention block of the image encoder:
    CCS  = cos(class token of the image, class token of the reference)
    ASCS = mean over the positions held by either image of cos(attention row of the image, of the reference)
    top_X(m) = the ceil(X·P) positions that receive the most attention in map m (column sums), P positions
    TOAI = top_X(image) ∩ top_X(reference)
If CCS > a and ASCS > b (paper: a = b = 0.7, X = 20 %), the training image's attention towards the TOAI positions
is reinforced. Here the block is VIR's last Spatial-PAE self-attention; its class token is the projected global
token (VIR's position 0); its map is averaged over heads and placed in the frame of the 1 + N token positions
(VIR keeps r_k of them, in belief order, so two images' kept tokens differ). The paper does not give the
reinforcement as a formula; we multiply the post-softmax weights of every query towards the kept tokens whose
position is in the TOAI by (1 + λ) (λ = ``strength``, default 1: doubled) and renormalise each row. Gates, maps
and TOAI are computed without gradient; the gradient flows through the reinforced attention.

The reference of a sample is the next sample of the batch (cyclically) with the same class label and another
image id; a sample without one, or without a label, is not reinforced. PAR acts only in training: at inference
there is no reference and the model runs unchanged. The test-time score bonus of ``engine query --rerank
par-bonus`` (engine/query/rerank/scores.py) is a different mechanism that borrows the same gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NO_REFERENCE = -1


@dataclass(frozen=True)
class ParSettings:
    ccs_min: float = 0.7
    ascs_min: float = 0.7
    top_fraction: float = 0.2
    strength: float = 1.0


@dataclass
class ParStats:
    """What one batch's reinforcement did: samples with a reference, of them gated, mean TOAI size (positions)."""

    paired: int = 0
    gated: int = 0
    overlap: float = 0.0


def pair_references(class_ids: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """(B,) the batch position of each sample's reference: the next sample (cyclically) with the same class and
    another image id; NO_REFERENCE when there is none or the sample is unlabelled (class < 0)."""
    size = class_ids.numel()
    references = torch.full((size,), NO_REFERENCE, dtype=torch.long)
    classes, images = class_ids.tolist(), image_ids.tolist()
    for i in range(size):
        if classes[i] < 0:
            continue
        for step in range(1, size):
            j = (i + step) % size
            if classes[j] == classes[i] and images[j] != images[i]:
                references[i] = j
                break
    return references.to(class_ids.device)


def position_maps(attention: torch.Tensor, indices: torch.Tensor, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-averaged maps over kept tokens (B, h, K, K) with their positions (B, K) -> (B, P, P) maps in the
    position frame (zeros for dropped positions) and the (B, P) kept mask."""
    batch = attention.shape[0]
    maps = attention.mean(dim=1)
    frame = maps.new_zeros(batch, positions, positions)
    rows = indices[:, :, None].expand(-1, -1, indices.shape[1])
    cols = indices[:, None, :].expand(-1, indices.shape[1], -1)
    frame[torch.arange(batch)[:, None, None], rows, cols] = maps
    kept = torch.zeros(batch, positions, dtype=torch.bool, device=attention.device)
    kept[torch.arange(batch)[:, None], indices] = True
    return frame, kept


def map_similarity(first: torch.Tensor, first_kept: torch.Tensor, second: torch.Tensor,
                   second_kept: torch.Tensor) -> torch.Tensor:
    """ASCS (B,): mean over positions held by either image of the cosine of their attention rows (0 where a row
    is empty)."""
    dot = (first * second).sum(dim=-1)
    norms = first.norm(dim=-1) * second.norm(dim=-1)
    cosine = torch.where(norms > 1e-12, dot / norms.clamp(min=1e-12), torch.zeros_like(dot))
    union = first_kept | second_kept
    return (cosine * union).sum(dim=1) / union.sum(dim=1).clamp(min=1)


def top_positions(frame: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """(B, P) bool: the ceil(X·P) positions receiving the most attention (column sums), ties to the lower index."""
    received = frame.sum(dim=-2)
    count = max(1, math.ceil(top_fraction * received.shape[-1]))
    order = torch.sort(-received, dim=-1, stable=True).indices[:, :count]
    chosen = torch.zeros_like(received, dtype=torch.bool)
    chosen.scatter_(1, order, True)
    return chosen


def reinforce(attention: torch.Tensor, indices: torch.Tensor, class_tokens: torch.Tensor,
              references: torch.Tensor, positions: int, settings: ParSettings) -> tuple[torch.Tensor, ParStats]:
    """The reinforced post-softmax attention (B, h, K, K) of one self-attention call and what the gates did.

    ``indices`` (B, K): positions of the kept tokens in the 1 + N frame; ``class_tokens`` (B, D);
    ``references`` (B,) from ``pair_references``."""
    with torch.no_grad():
        frame, kept = position_maps(attention.detach().float(), indices, positions)
        has_reference = references >= 0
        partner = references.clamp(min=0)
        ccs = F.cosine_similarity(class_tokens.detach().float(), class_tokens.detach().float()[partner], dim=-1)
        ascs = map_similarity(frame, kept, frame[partner], kept[partner])
        top = top_positions(frame, settings.top_fraction)
        overlap = top & top[partner]  # (B, P): the TOAI positions of each sample
        gated = has_reference & (ccs > settings.ccs_min) & (ascs > settings.ascs_min)
        boosted = overlap.gather(1, indices) & gated[:, None]  # (B, K): kept keys at TOAI positions
        factor = 1.0 + settings.strength * boosted.to(attention.dtype)
    stats = ParStats(int(has_reference.sum()), int(gated.sum()),
                     float(overlap[has_reference].sum(dim=1).float().mean()) if bool(has_reference.any()) else 0.0)
    raised = attention * factor[:, None, None, :]
    return raised / raised.sum(dim=-1, keepdim=True), stats
