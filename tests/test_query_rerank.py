"""Reranker math on constructed features, AAS on real images through the tiny model, and subset search."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine.query.rerank.features import AttentionFeatures
from engine.query.rerank.scores import aas_scores, attend, par_terms, top_positions
from engine.query.search import exact_subset, search_subset

HEADS, TOKENS, DIM = 2, 9, 8


def features(query, key, value, maps=None) -> AttentionFeatures:
    count, _, tokens, _ = query.shape
    maps = np.full((count, tokens, tokens), 1.0 / tokens, np.float32) if maps is None else maps
    kept = np.ones(maps.shape[:2], bool)
    return AttentionFeatures(query, key, value, maps, kept)


def random_qkv(rng, count: int = 1) -> tuple[np.ndarray, ...]:
    return tuple(rng.normal(size=(count, HEADS, TOKENS, DIM)).astype(np.float32) for _ in range(3))


def test_attend_matches_a_naive_softmax() -> None:
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(HEADS, TOKENS, DIM)) for _ in range(3))
    expected = np.zeros_like(q)
    for head in range(HEADS):
        for row in range(TOKENS):
            logits = np.array([q[head, row] @ k[head, col] for col in range(TOKENS)]) / np.sqrt(DIM)
            weights = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            expected[head, row] = weights @ v[head]
    np.testing.assert_allclose(attend(q, k, v), expected, rtol=1e-6, atol=1e-9)


def test_identical_image_scores_highest_and_one() -> None:
    rng = np.random.default_rng(1)
    reference = random_qkv(rng)
    others = random_qkv(rng, 5)
    candidates = features(*(np.concatenate([ref, other]) for ref, other in zip(reference, others)))
    scores = aas_scores(features(*reference), candidates)
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert int(np.argmax(scores)) == 0 and (scores[1:] < 0.99).all()


def _naive_attend(query, key, value):
    """(h, Nq, d), (h, Nk, d) -> (h, Nq, d): per head and query row, from softmax(q·k/√d) weights."""
    heads, rows, width = query.shape
    out = np.zeros((heads, rows, value.shape[-1]))
    for head in range(heads):
        for row in range(rows):
            logits = np.array([query[head, row] @ key[head, col] for col in range(key.shape[1])]) / np.sqrt(width)
            weights = np.exp(logits - logits.max())
            out[head, row] = (weights / weights.sum()) @ value[head]
    return out


def _naive_aas_one_way(a, b):
    """DiffSim AAS(A, B) = cos(attn(Q_A, K_A, V_A), attn(Q_A, K_B, V_B)), flattened over heads and tokens."""
    own = _naive_attend(a[0][0], a[1][0], a[2][0]).ravel()
    read = _naive_attend(a[0][0], b[1][0], b[2][0]).ravel()
    return float(own @ read / (np.linalg.norm(own) * np.linalg.norm(read)))


def test_aas_matches_the_naive_formula_in_both_directions() -> None:
    """score = ½(AAS(A, B) + AAS(B, A)); the inputs make the two directions differ, so an implementation that
    computed only one of them, or read B's queries where A's belong, fails."""
    rng = np.random.default_rng(2)
    first, second = random_qkv(rng), random_qkv(rng)
    forward, backward = _naive_aas_one_way(first, second), _naive_aas_one_way(second, first)
    assert abs(forward - backward) > 0.01
    expected = 0.5 * (forward + backward)
    assert aas_scores(features(*first), features(*second))[0] == pytest.approx(expected, abs=1e-5)
    assert aas_scores(features(*second), features(*first))[0] == pytest.approx(expected, abs=1e-5)


def test_aas_reads_the_other_images_keys_as_a_set() -> None:
    """The same tokens in another order: A's queries read B's keys and values jointly, so nothing changes and
    AAS is 1. A position-by-position comparison of the two images' own attention outputs (the usual mistake)
    gives far less on the same input."""
    rng = np.random.default_rng(6)
    query, key, value = random_qkv(rng)
    order = rng.permutation(TOKENS)
    permuted = tuple(part[:, :, order] for part in (query, key, value))
    other = random_qkv(rng)
    candidates = features(*(np.concatenate([p, o]) for p, o in zip(permuted, other)))
    scores = aas_scores(features(query, key, value), candidates)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] < 0.99
    own, theirs = attend(query, key, value), attend(*permuted)
    positionwise = float((own * theirs).sum() / (np.linalg.norm(own) * np.linalg.norm(theirs)))
    assert positionwise < 0.9


def test_aas_runs_on_the_tiny_models_real_features() -> None:
    """extract_features + aas_scores end to end: an image against itself scores 1 (float16 storage), and the
    score of two different images equals the naive formula on the stored Q/K/V."""
    import torch

    import encoders
    from engine.query.rerank.features import extract_features
    from query_fixtures import structured_image

    torch.manual_seed(0)
    model = encoders.create_model("tiny-test").eval()
    transform = model.image_transform(train=False)
    pixels = torch.stack([transform(structured_image(seed, side=96)) for seed in (3, 3, 4)])
    batch = extract_features(model, pixels, layer=-1).as_float32()
    scores = aas_scores(batch.take([0]), batch.take([1, 2]))
    assert scores[0] == pytest.approx(1.0, abs=1e-3)

    def parts(row: int):
        return tuple(getattr(batch, name)[[row]].astype(np.float64) for name in ("query", "key", "value"))

    expected = 0.5 * (_naive_aas_one_way(parts(0), parts(2)) + _naive_aas_one_way(parts(2), parts(0)))
    assert scores[1] == pytest.approx(expected, abs=1e-4)


def one_map(hot: list[int], positions: int = 10) -> np.ndarray:
    attention = np.full((positions, positions), 0.01, np.float32)
    attention[:, hot] = 1.0
    return attention / attention.sum(axis=1, keepdims=True)


def par_case(cand_globals: np.ndarray, cand_maps: np.ndarray, **overrides):
    rng = np.random.default_rng(3)
    qkv = random_qkv(rng, 1)
    reference = features(*qkv, maps=one_map([1, 2])[None])
    count = len(cand_maps)
    candidates = features(*(np.repeat(part, count, axis=0) for part in qkv), maps=cand_maps)
    options = {"ccs_min": 0.7, "ascs_min": 0.7, "top_fraction": 0.2, "beta": 0.1} | overrides
    return par_terms(np.array([1.0, 0.0]), reference, cand_globals, candidates, **options)


def test_par_gates_on_both_thresholds_and_rewards_overlap() -> None:
    maps = np.stack([one_map([1, 2]), one_map([1, 5]), one_map([7, 8]), one_map([1, 2])])
    globals_ = np.array([[1.0, 0.1], [1.0, 0.2], [1.0, 0.0], [0.0, 1.0]])  # the last one fails the CCS gate
    terms = par_case(globals_, maps)
    assert terms.overlap.tolist() == [1.0, 0.5, 0.0, 1.0]
    assert terms.ascs[0] == pytest.approx(1.0) and 0.4 < terms.ascs[1] < 0.7 and terms.ascs[2] < 0.1
    assert terms.gated.tolist() == [True, False, False, False]  # half-shared attention fails ASCS > 0.7
    np.testing.assert_allclose(terms.bonus, [0.1, 0.0, 0.0, 0.0])
    loose = par_case(globals_, maps, ascs_min=0.4)
    assert loose.gated.tolist() == [True, True, False, False]  # CCS alone still rejects the last one
    np.testing.assert_allclose(loose.bonus, [0.1, 0.05, 0.0, 0.0])
    no_gate = par_case(globals_, maps, ccs_min=-1.0, ascs_min=-1.0)
    np.testing.assert_allclose(no_gate.bonus, [0.1, 0.05, 0.0, 0.1])


def test_position_aware_attention_makes_shuffled_patches_score_lower() -> None:
    """A ViT-like layer (tokens = patch content + position embedding): shuffling patches changes AAS clearly."""
    rng = np.random.default_rng(5)
    content = rng.normal(size=(TOKENS, DIM * HEADS))
    position = rng.normal(size=(TOKENS, DIM * HEADS))
    weights = [rng.normal(size=(DIM * HEADS, DIM * HEADS)) / DIM for _ in range(3)]

    def layer(tokens: np.ndarray) -> AttentionFeatures:
        parts = [(tokens @ w).reshape(TOKENS, HEADS, DIM).transpose(1, 0, 2)[None].astype(np.float32)
                 for w in weights]
        return features(*parts)

    original = layer(content + position)
    shuffled = layer(content[rng.permutation(TOKENS)] + position)
    other = layer(rng.normal(size=content.shape) + position)
    same, mixed, unrelated = (aas_scores(original, candidate)[0] for candidate in (original, shuffled, other))
    assert same == pytest.approx(1.0, abs=1e-6) and unrelated < mixed < same - 0.01


def test_top_positions_picks_the_most_attended_share() -> None:
    chosen = top_positions(one_map([3, 6])[None], 0.2)
    assert np.flatnonzero(chosen[0]).tolist() == [3, 6]


class ArrayStore:
    """Stands in for MetadataStore: stored embeddings by id."""

    def __init__(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        self.ids, self.matrix = ids, matrix

    def embeddings_for(self, wanted: np.ndarray):
        rows = np.flatnonzero(np.isin(self.ids, wanted))
        return self.ids[rows], self.matrix[rows]


@pytest.mark.parametrize("factory", ["IDMap,Flat", "IVF4,Flat", "IDMap,HNSW8"])
def test_subset_search_returns_k_from_the_allowed_ids_for_every_index_kind(factory: str, monkeypatch) -> None:
    faiss = pytest.importorskip("faiss")
    from engine.query import search

    rng = np.random.default_rng(4)
    matrix = rng.normal(size=(400, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = np.arange(1000, 1400, dtype=np.int64)
    index = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(matrix)
    index.add_with_ids(matrix, ids)
    allowed = ids[::7]
    store = ArrayStore(ids, matrix)
    exact = exact_subset(matrix[0], 10, allowed, store)
    monkeypatch.setattr(search, "EXACT_SUBSET_MAX", 5)  # force the faiss selector path
    found = search_subset(index, matrix[0], 10, allowed, store)
    assert len(found.ids) == 10 and set(found.ids) <= set(allowed)
    if factory == "IDMap,Flat":
        assert found.method == "faiss+selector" and found.ids.tolist() == exact.ids.tolist()
    few = search_subset(index, matrix[0], 10, allowed[:3], store)
    assert sorted(few.ids.tolist()) == sorted(allowed[:3].tolist())
