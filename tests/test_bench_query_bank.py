"""bench.query_bank's summary: seed runs of different recipes are never pooled into one mean."""

from __future__ import annotations

import pytest

from bench.query_bank import NO_NORM, render


def _entry(model: str, gain: float, seed_run: bool = True) -> dict:
    none = {"mean:val": 40.0, "rsicd:test": 20.0}
    return {"model": model, "datasets": ["rsicd"], "directions": "both", "weighting": "balanced",
            "chosen_beta": 10.0, "seed_run": seed_run,
            "bank": {"texts": 3, "caption_rows": 5, "images": 2},
            "scores": {NO_NORM: none, 10.0: {k: v + gain for k, v in none.items()}}}


META = {"date": "2026-12-07", "machine": "test", "commit": "abcdef0", "command": "cmd", "runs_file": "f.json"}


def test_each_recipe_gets_its_own_seed_summary() -> None:
    entries = [_entry(f"runs/mix-ablation/r-a-seed{s}/best", 1.0 + s / 10) for s in (1, 2, 3)]
    entries += [_entry(f"runs/mix-ablation/r-b-seed{s}/best", 3.0 + s / 10) for s in (1, 2, 3)]
    entries.append(_entry("runs/soup", 9.0, seed_run=False))
    text = render(entries, META)
    lines = [line for line in text.splitlines() if "change over the" in line]
    assert len(lines) == 2
    assert lines[0].startswith("r-a, both directions, balanced bank normalised, change over the 3 seed runs")
    assert "rsicd test +1.20 ± 0.10" in lines[0] and "mean val +1.20 ± 0.10" in lines[0]
    assert lines[1].startswith("r-b, ") and "rsicd test +3.20 ± 0.10" in lines[1]


@pytest.mark.parametrize("model, recipe", [("runs/x/r-12ep+8-seed2/best", "r-12ep+8"), ("runs/x-seed1", "x"), ("runs/soup4", "runs/soup4")])
def test_recipe_is_the_run_folder_without_its_seed(model: str, recipe: str) -> None:
    from bench.query_bank import _recipe

    assert _recipe({"model": model}) == recipe
