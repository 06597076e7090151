"""Synthetic retrieval embeddings, exact ground truth and recall@k for the ANN benchmark.

Uniform noise on the sphere is the worst case for every ANN index and looks nothing like real embeddings, which
are clustered (one cluster per concept/scene type) and share a common direction (the "cone" of CLIP-like
models). The generator below reproduces both properties and is fully determined by :class:`SyntheticConfig`:

1. a global unit direction ``mu`` and ``n_clusters`` centres ``c_j = normalise(anisotropy * mu + u_j)`` with
   ``u_j`` uniform on the unit sphere;
2. cluster weights ``w ~ Dirichlet(1, ..., 1)`` (unequal cluster sizes, as classes in real collections are);
3. a per-cluster spread ``s_j = spread * U(0.5, 1.5)``;
4. a point of cluster ``j`` is ``normalise(c_j + s_j * R (a ⊙ e))`` with ``e ~ N(0, I)``, ``R`` a fixed random
   rotation and ``a_i ∝ i**(-spectrum_decay / 2)`` scaled to unit norm: the within-cluster variance decays as a
   power law over directions (spectrum_decay 1.0 gives an effective dimension near 30 at dim 512, like real
   embedding spectra; 0 gives isotropic noise, the worst case for ANN). ``|noise| ≈ s_j``, so a point's cosine
   to its centre is about ``1 / sqrt(1 + s_j**2)`` (≈ 0.64 for the default spread 1.2).

Base vectors and queries use independent random streams (``seed`` and ``seed + 1``) over the same mixture, so
queries come from the same distribution but are not in the base set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import ConfigError

SPREAD_LOW, SPREAD_HIGH = 0.5, 1.5
GENERATION_CHUNK_ROWS = 65_536
GROUND_TRUTH_CHUNK_ROWS = 32_768


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the synthetic vectors (stored in the result JSON)."""

    dim: int = 512
    n_clusters: int = 2_000
    anisotropy: float = 0.3
    spread: float = 1.2
    spectrum_decay: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.n_clusters <= 0:
            raise ConfigError(f"synthetic data: dim and n_clusters must be positive, got {self.dim}, "
                              f"{self.n_clusters}")
        if self.spread <= 0 or self.anisotropy < 0 or self.spectrum_decay < 0:
            raise ConfigError(f"synthetic data: spread must be > 0, anisotropy and spectrum_decay >= 0, got "
                              f"{self.spread}, {self.anisotropy}, {self.spectrum_decay}")


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """L2-normalise rows in place (float32) and return the matrix."""
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix


class ClusterMixture:
    """The fixed mixture (centres, weights, spreads) drawn once from ``config.seed``."""

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        mean_direction = normalise_rows(rng.standard_normal((1, config.dim), dtype=np.float32))
        offsets = normalise_rows(rng.standard_normal((config.n_clusters, config.dim), dtype=np.float32))
        self.centres = normalise_rows(config.anisotropy * mean_direction + offsets)
        self.weights = rng.dirichlet(np.ones(config.n_clusters))
        self.spreads = (config.spread * rng.uniform(SPREAD_LOW, SPREAD_HIGH, config.n_clusters)).astype(np.float32)
        axis_scales = np.arange(1, config.dim + 1, dtype=np.float64) ** (-config.spectrum_decay / 2)
        rotation, _ = np.linalg.qr(rng.standard_normal((config.dim, config.dim)))
        # rows of noise_basis are the scaled principal directions: noise = e @ noise_basis
        self.noise_basis = (axis_scales[:, None] / np.linalg.norm(axis_scales) * rotation.T).astype(np.float32)

    def sample(self, count: int, stream: int) -> np.ndarray:
        """``count`` unit vectors (float32, C-contiguous) from random stream ``stream``; generated in chunks."""
        rng = np.random.default_rng([self.config.seed, 1 + stream])
        out = np.empty((count, self.config.dim), dtype=np.float32)
        for start in range(0, count, GENERATION_CHUNK_ROWS):
            stop = min(count, start + GENERATION_CHUNK_ROWS)
            members = rng.choice(self.config.n_clusters, size=stop - start, p=self.weights)
            noise = rng.standard_normal((stop - start, self.config.dim), dtype=np.float32) @ self.noise_basis
            noise *= self.spreads[members][:, None]
            noise += self.centres[members]
            out[start:stop] = normalise_rows(noise)
        return out


BASE_STREAM, QUERY_STREAM = 0, 1


def make_vectors(config: SyntheticConfig, count: int, query_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Base vectors and held-out queries from the same mixture (independent random streams)."""
    if count <= 0 or query_count <= 0:
        raise ConfigError(f"synthetic data: need positive base and query counts, got {count}, {query_count}")
    mixture = ClusterMixture(config)
    return mixture.sample(count, BASE_STREAM), mixture.sample(query_count, QUERY_STREAM)


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by inner product, computed in float64 over base chunks so float32 rounding cannot
    reorder the reference; ids within a row are sorted by decreasing score."""
    if k > len(base):
        raise ConfigError(f"k={k} is larger than the {len(base)} base vectors")
    queries64 = queries.astype(np.float64)
    best_scores = np.full((len(queries), 0), -np.inf)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(base), GROUND_TRUTH_CHUNK_ROWS):
        chunk = base[start:start + GROUND_TRUTH_CHUNK_ROWS].astype(np.float64)
        scores = np.concatenate([best_scores, queries64 @ chunk.T], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(start, start + len(chunk)),
                                                        (len(queries), len(chunk)))], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else \
            np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(ids, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k; ids absent from the result (faiss's -1) never match
    and a repeated id counts once."""
    if found.shape[0] != truth.shape[0] or found.shape[1] < k or truth.shape[1] < k:
        raise ValueError(f"recall@{k}: result {found.shape} and truth {truth.shape} do not line up")
    hits = 0
    for row_found, row_truth in zip(found[:, :k], truth[:, :k]):
        hits += len(set(row_found.tolist()) & set(row_truth.tolist()))
    return hits / (k * found.shape[0])
