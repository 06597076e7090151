"""The model card's numbers belong to the model that ships: a re-ship without re-running the evals fails here.

The eval result files record the fingerprint of the model they scored; the shipped model, loaded as a user
loads it, must report the same one (with its own views for shipped-*.json, with one view for *-1view.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"


def _fingerprint(name: str) -> str:
    return json.loads((RESULTS / name).read_text())["model"]["fingerprint"]


def _views(name: str) -> int:
    return json.loads((RESULTS / name).read_text())["settings"]["test_time_views"]


@pytest.fixture(scope="module")
def shipped():
    import encoders

    return encoders.load_model(None)


def test_eval_results_are_of_the_shipped_model(shipped) -> None:
    shipped_views = shipped.config.vision.test_time_views
    for name in ("shipped-val.json", "shipped-test.json", "shipped-rsicd-test.json"):
        assert _fingerprint(name) == shipped.fingerprint(), f"{name} scored another model: re-run engine eval"
        assert _views(name) == shipped_views


def test_one_view_results_are_of_the_same_weights(shipped) -> None:
    shipped_views = shipped.config.vision.test_time_views
    try:
        shipped.set_test_time_views(1)
        for name in ("shipped-val-1view.json", "shipped-test-1view.json", "shipped-rsicd-val-1view.json",
                     "shipped-rsicd-test-1view.json"):
            assert _fingerprint(name) == shipped.fingerprint(), f"{name} scored another model"
            assert _views(name) == 1
    finally:
        shipped.set_test_time_views(shipped_views)


def test_results_name_the_shipped_query_bank(shipped) -> None:
    """The fingerprint covers the weights, not the query bank beside them: the default result files record the
    bank's digest (a rebuilt bank without re-run evals fails here), the ``-plain`` ones none."""
    expected = shipped.query_bank.describe()["digest"] if shipped.query_bank is not None else None
    for name in ("shipped-val.json", "shipped-test.json", "shipped-rsicd-test.json", "shipped-val-1view.json",
                 "shipped-test-1view.json", "shipped-rsicd-val-1view.json", "shipped-rsicd-test-1view.json"):
        recorded = json.loads((RESULTS / name).read_text())["settings"].get("query_bank") or {}
        assert recorded.get("digest") == expected, f"{name} scored another query bank: re-run engine eval"
        plain = name.replace(".json", "-plain.json")
        assert _fingerprint(plain) == _fingerprint(name)
        assert not json.loads((RESULTS / plain).read_text())["settings"].get("query_bank"), plain


def test_model_card_names_the_shipped_fingerprint(shipped) -> None:
    card = (REPO / "docs" / "MODEL_CARD.md").read_text()
    assert f"model fingerprint `{shipped.fingerprint()[:16]}" in card


def test_ucm_v1_results_are_of_the_named_model() -> None:
    """The previous default's tables (docs/results/ucm-v1/) stay reproducible with ``--model ucm-v1``."""
    import encoders
    from encoders.checkpoint import model_folder

    model = encoders.load_model(model_folder("ucm-v1"))
    views = model.config.vision.test_time_views
    try:
        for name in ("ucm-v1/ucm-val.json", "ucm-v1/ucm-test.json", "ucm-v1/ucm-val-1view.json",
                     "ucm-v1/ucm-test-1view.json", "ucm-v1/rsicd-test-1view.json"):
            model.set_test_time_views(_views(name))
            assert _fingerprint(name) == model.fingerprint(), f"{name} scored another model"
    finally:
        model.set_test_time_views(views)
