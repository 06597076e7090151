"""Reranking scores on cached attention features (numpy; formulas and their reasons in docs/query.md).

AAS (DiffSim): attn(Q, K, V) = softmax(Q Kᵀ / √d) V per head. For images A and B,
    AAS(A, B) = cos( vec attn(Q_A, K_A, V_A), vec attn(Q_A, K_B, V_B) )      (flattened over heads and tokens)
    score(A, B) = ½ (AAS(A, B) + AAS(B, A))
A's queries read B's keys/values: if B offers the same content under the same keys, A's attention output is
unchanged and the cosine is 1. Keys can differ in number (A's N queries against B's M keys is well defined).

par-bonus (a query-time score bonus built from PAR's gates; PAR itself reinforces attention in training,
``engine train --par``, encoders/par.py): for a reference r and a candidate c,
    CCS  = cos(global embedding of r, of c)
    ASCS = mean over positions held by r or c of cos(map_r[p, :], map_c[p, :])   (0 where one row is empty)
    TOAI = |top_X(r) ∩ top_X(c)| / |top_X|,  top_X = the ceil(X·P) positions receiving the most attention
    bonus = β · TOAI   if CCS > a and ASCS > b, else 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.query.rerank.features import AttentionFeatures

EPSILON = 1e-12


def attend(query: np.ndarray, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """softmax(Q Kᵀ/√d) V over the last two axes; shapes (..., h, Nq, d), (..., h, Nk, d) -> (..., h, Nq, d)."""
    scores = query @ np.swapaxes(key, -1, -2) / math.sqrt(query.shape[-1])
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ value


def _flat_cosine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine between the flattened trailing (h, N, d) blocks of two broadcastable arrays -> (C,)."""
    first, second = np.broadcast_arrays(first, second)
    a = first.reshape(first.shape[0], -1) if first.ndim == 4 else first.reshape(1, -1)
    b = second.reshape(second.shape[0], -1) if second.ndim == 4 else second.reshape(1, -1)
    dot = (a * b).sum(axis=1)
    return dot / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), EPSILON)


def aas_scores(reference: AttentionFeatures, candidates: AttentionFeatures) -> np.ndarray:
    """Symmetric AAS of one reference image (row 0 of ``reference``) against every candidate -> (C,)."""
    ref = reference.as_float32().take([0])
    cand = candidates.as_float32()
    self_ref = attend(ref.query, ref.key, ref.value)  # (1, h, N, d)
    ref_reads_cand = attend(ref.query, cand.key, cand.value)  # (C, h, N, d)
    forward = _flat_cosine(np.broadcast_to(self_ref, ref_reads_cand.shape), ref_reads_cand)
    self_cand = attend(cand.query, cand.key, cand.value)
    cand_reads_ref = attend(cand.query, ref.key, ref.value)
    backward = _flat_cosine(self_cand, cand_reads_ref)
    return 0.5 * (forward + backward)


@dataclass(frozen=True)
class ParTerms:
    """Per-candidate PAR terms against one reference: CCS, ASCS, TOAI overlap, gate and bonus (all (C,))."""

    ccs: np.ndarray
    ascs: np.ndarray
    overlap: np.ndarray
    gated: np.ndarray
    bonus: np.ndarray


def attention_map_similarity(ref_map: np.ndarray, ref_kept: np.ndarray, maps: np.ndarray,
                             kept: np.ndarray) -> np.ndarray:
    """ASCS: mean over positions held by either image of the cosine of their attention rows -> (C,)."""
    dot = (maps * ref_map[None]).sum(axis=-1)  # (C, P)
    norms = np.linalg.norm(maps, axis=-1) * np.linalg.norm(ref_map, axis=-1)[None]
    cosine = np.where(norms > EPSILON, dot / np.maximum(norms, EPSILON), 0.0)
    union = kept | ref_kept[None]
    return (cosine * union).sum(axis=1) / np.maximum(union.sum(axis=1), 1)


def top_positions(maps: np.ndarray, top_fraction: float) -> np.ndarray:
    """(C, P) bool: the ceil(X·P) positions receiving the most attention (column sums), ties to the lower index."""
    received = maps.sum(axis=-2)  # (C, P)
    count = max(1, math.ceil(top_fraction * received.shape[-1]))
    order = np.argsort(-received, axis=-1, kind="stable")[:, :count]
    chosen = np.zeros(received.shape, bool)
    np.put_along_axis(chosen, order, True, axis=-1)
    return chosen


def par_terms(ref_global: np.ndarray, reference: AttentionFeatures, cand_globals: np.ndarray,
              candidates: AttentionFeatures, ccs_min: float, ascs_min: float, top_fraction: float,
              beta: float) -> ParTerms:
    ref_global = ref_global.astype(np.float32)
    cand_globals = cand_globals.astype(np.float32)
    ccs = cand_globals @ ref_global / np.maximum(
        np.linalg.norm(cand_globals, axis=1) * np.linalg.norm(ref_global), EPSILON)
    ref_map = reference.maps[0].astype(np.float32)
    maps = candidates.maps.astype(np.float32)
    ascs = attention_map_similarity(ref_map, reference.kept[0], maps, candidates.kept)
    ref_top = top_positions(ref_map[None], top_fraction)[0]
    cand_top = top_positions(maps, top_fraction)
    overlap = (cand_top & ref_top[None]).sum(axis=1) / max(int(ref_top.sum()), 1)
    gated = (ccs > ccs_min) & (ascs > ascs_min)
    return ParTerms(ccs, ascs, overlap, gated, np.where(gated, beta * overlap, 0.0))
