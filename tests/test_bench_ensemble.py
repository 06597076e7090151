"""bench.ensemble: the ensemble's cosine is the weighted members' cosine, w and β are chosen on val only, and the
first member alone is what the ensemble is paired against."""

from __future__ import annotations

import numpy as np
import pytest

from bench.ensemble import banked_ranks, combined, member_embeddings, score_pair
from engine.errors import ConfigError


def _unit(rng, rows: int, dim: int = 8) -> np.ndarray:
    values = rng.normal(size=(rows, dim)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def _member(seed: int, noise: float) -> dict[str, np.ndarray]:
    """One dataset "d" whose captions are noisy copies of their image (5 each); train/val/test of 12 images."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        images = _unit(np.random.default_rng({"train": 10, "val": 11, "test": 12}[split]), 12)  # same scenes, both
        owner = np.repeat(np.arange(12), 5)
        texts = images[owner] + noise * rng.normal(size=(60, 8)).astype(np.float32)
        texts /= np.linalg.norm(texts, axis=1, keepdims=True)
        arrays.update({f"d:{split}:images": images, f"d:{split}:texts": texts, f"d:{split}:distinct": texts,
                       f"d:{split}:counts": np.ones(60), f"d:{split}:owner": owner})
    return arrays


def test_ensemble_cosine_is_the_weighted_members_cosine() -> None:
    first, second = _member(1, 0.5), _member(2, 0.8)
    both_images = combined(first, second, 0.7, "d", "val", "images")
    both_texts = combined(first, second, 0.7, "d", "val", "texts")
    expected = 0.7 * first["d:val:images"] @ first["d:val:texts"].T + 0.3 * second["d:val:images"] @ second["d:val:texts"].T
    assert np.allclose(both_images @ both_texts.T, expected, atol=1e-5)
    assert combined(first, second, 0.7, "d", "val", "owner") is first["d:val:owner"]
    assert combined(first, None, 0.7, "d", "val", "images") is first["d:val:images"]


def test_choice_is_made_on_val_and_the_base_is_the_first_member_alone() -> None:
    from engine.metrics import recalls_from_ranks

    first, second = _member(1, 0.9), _member(2, 0.9)
    entry = score_pair(first, second, ["d"], weights=[0.3, 0.7], betas=[5.0, 10.0], base_beta=10.0)
    assert set(entry["grid"]) == {"0.3|5", "0.3|10", "0.7|5", "0.7|10"}
    assert entry["grid"][f"{entry['chosen']['weight']:g}|{entry['chosen']['beta']:g}"] == max(entry["grid"].values())
    base = recalls_from_ranks(banked_ranks(first, None, 1.0, 10.0, ["d"], "d", "test")[0])["mR"]
    assert entry["splits"]["d:test"]["first"] == round(base, 2)
    cell = entry["splits"]["d:val"]
    assert cell["ensemble"] == entry["grid"][f"{entry['chosen']['weight']:g}|{entry['chosen']['beta']:g}"]
    low, high = cell["paired"]["bounds"]
    assert low <= cell["paired"]["mR"] <= high


def test_a_member_is_three_existing_paths(tmp_path) -> None:
    with pytest.raises(ConfigError, match="expected MODEL_DIR,TRAIN_CONFIG,FEATURE_CACHE"):
        member_embeddings("runs/soup4", None, ["d"], tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        member_embeddings(f"{tmp_path}/no-model,{tmp_path},{tmp_path}", None, ["d"], tmp_path)


def test_plain_scores_without_any_bank() -> None:
    from engine.metrics import recalls_from_ranks, retrieval_ranks

    first, second = _member(1, 0.9), _member(2, 0.9)
    entry = score_pair(first, second, ["d"], weights=[0.5], betas=[None], base_beta=None)
    assert entry["chosen"] == {"weight": 0.5, "beta": None} and set(entry["grid"]) == {"0.5|plain"}
    images = combined(first, second, 0.5, "d", "test", "images")
    texts = combined(first, second, 0.5, "d", "test", "texts")
    plain = recalls_from_ranks(retrieval_ranks(images, texts, first["d:test:owner"]))["mR"]
    assert entry["splits"]["d:test"]["ensemble"] == round(plain, 2)
