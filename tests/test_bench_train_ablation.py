"""bench/train_ablation.py bookkeeping: new runs replace earlier summaries, every row says when it was measured."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not an installed package

from bench import train_ablation


def _run(variant: str, seed: int, test_mr: float) -> dict:
    metrics = {key: test_mr for key in train_ablation.KEYS}
    return {"variant": variant, "seed": seed, "val": metrics, "test": metrics, "train_seconds": 10.0,
            "measured": "2026-12-03, abc1234"}


def _earlier(test_mr: float) -> dict:
    row = {f"test_{key}": [test_mr, None] for key in train_ablation.KEYS}
    row.update({"seeds": 3, "train_seconds": 40.0, "val_mR": [50.0, 0.5], "test_mR": [test_mr, 0.4],
                "measured": "2026-11-23, fa8766c (per-seed runs not kept)"})
    return row


def test_measured_variants_replace_earlier_summaries_in_table_order() -> None:
    runs = [_run("d-lca", 1, 47.0), _run("d-lca", 2, 49.0), _run("d-lca", 9, 10.0)]  # seed 9 not asked for
    runs[0].update(train_seconds=1900.0, built_feature_cache=True)  # its time was mostly encoding images
    earlier = {"e-full": _earlier(48.07), "d-lca": _earlier(1.0), "a-floor": _earlier(48.15)}
    summary = train_ablation.merged_summary(runs, earlier, seeds=[1, 2])
    assert list(summary) == ["a-floor", "d-lca", "e-full"]
    assert summary["d-lca"]["test_mR"][0] == 48.0 and summary["d-lca"]["seeds"] == 2
    assert summary["d-lca"]["measured"] == "2026-12-03, abc1234"
    assert summary["d-lca"]["train_seconds"] == 10.0
    meta = {"date": "2026-12-03", "machine": "2 cores", "commit": "abc1234def", "command": "python x", "data": "d",
            "seeds": [1, 2], "epochs": 12, "batch_size": 128, "lr": 5e-4, "model": "offline-default", "views": 8,
            "plot": "img/ablation-model.png", "runs_file": "docs/bench/ablation_model_runs.json",
            "results": "docs/results/model"}
    table = train_ablation.render(summary, meta)
    assert "| measured |" in table and "fa8766c (per-seed runs not kept)" in table
    assert "**48.00 ± 1.41**" in table and "**48.07 ± 0.40**" in table
    assert "(img/ablation-model.png)" in table


def test_partial_unfreezing_is_not_in_the_frozen_table_by_default() -> None:
    """g-tail1 needs a trunk cache of its own; the default variant list (the frozen table) leaves it out."""
    assert "g-tail1" in train_ablation.VARIANTS and "g-tail1" not in train_ablation.FROZEN_VARIANTS
    assert train_ablation.FROZEN_VARIANTS[:2] == ["a-floor", "b-cl-only"]
    assert train_ablation.VARIANTS["g-tail1"][1]["unfreeze_last"] == 1


def test_aid_tail_variant_takes_its_instruction_weights_from_the_flag() -> None:
    import pytest

    from training.train_config import TrainConfig

    base = TrainConfig(feature_cache="cache", instruction_weights="linear-probe.safetensors")
    config = train_ablation.variant_config(base, "m-aidtail1", 2, Path("aid-tail.safetensors"))
    assert (config.instruction_weights, config.seed, config.unfreeze_last) == ("aid-tail.safetensors", 2, 1)
    assert train_ablation.variant_config(base, "g-tail1", 1, None).instruction_weights == "linear-probe.safetensors"
    with pytest.raises(SystemExit, match="--aid-tail-instruction"):
        train_ablation.variant_config(base, "m-aidtail1", 1, None)


def test_issue19_variants_take_their_files_from_their_flags() -> None:
    import pytest

    from training.train_config import TrainConfig

    base = TrainConfig(feature_cache="cache", instruction_weights="linear-probe.safetensors")
    files = {train_ablation.SEPARATE_INSTRUCTION: Path("sep.safetensors"), train_ablation.TRAIN_MASKS: Path("m")}
    separate = train_ablation.variant_config(base, "f3-sep-instr", 1, None, files)
    assert (separate.model, separate.instruction_weights) == ("offline-separate-instruction", "sep.safetensors")
    masked = train_ablation.variant_config(base, "f5-mask-soft", 1, Path("aid.safetensors"), files)
    assert (masked.train_mask, masked.train_mask_sigma, masked.train_masks) == ("soft", 0.5, "m")
    assert masked.instruction_weights == "aid.safetensors"
    assert train_ablation.variant_config(base, "f1-aff-pir", 1, Path("a"), files).affiliation == "pir"
    assert train_ablation.variant_config(base, "f2-lca-mean", 1, Path("a"), files).lca_readout == "mean"
    assert train_ablation.variant_config(base, "f4-par", 1, Path("a"), files).par is True
    with pytest.raises(SystemExit, match="--train-masks"):
        train_ablation.variant_config(base, "f5-mask-hard", 1, Path("a"), {})
    with pytest.raises(SystemExit, match="--separate-instruction"):
        train_ablation.variant_config(base, "f3-sep-instr", 1, None, {})


def test_variant_without_vir_loads_no_instruction_file() -> None:
    """An --instruction-weights file may carry an AID-trained vision tail; f3-tail1-novir must not get it (it is
    g-tail1's vision side without VIR), whatever file the command line names."""
    from training.train_config import TrainConfig

    base = TrainConfig(feature_cache="cache", instruction_weights="aid-tail.safetensors")
    config = train_ablation.variant_config(base, "f3-tail1-novir", 1, Path("aid-tail.safetensors"))
    assert (config.use_vir, config.instruction_weights, config.unfreeze_last) == (False, None, 1)


def test_a_run_that_writes_a_new_cache_file_is_marked_as_having_built_it(tmp_path, monkeypatch) -> None:
    """The cache folder already holds another variant's file (as for masked images or a second instruction
    network): what counts is whether this run added one, not whether the folder was empty."""
    from types import SimpleNamespace

    import encoders.checkpoint
    import training.evaluate
    import training.loaders
    import training.pairs
    import training.train
    from training.feature_cache import cache_file
    from training.train_config import TrainConfig

    cache = tmp_path / "cache"
    cache.mkdir()
    cache_file(cache, "0" * 16).write_bytes(b"x")
    metrics = {key: 50.0 for key in train_ablation.KEYS}

    def fake_train(data, config, out, resume=None, show_progress=False):
        if config.seed == 1:  # the first seed encodes its images into a file of its own
            cache_file(cache, "1" * 16).write_bytes(b"y")
        state = SimpleNamespace(best_epoch=1, history=[{"epoch": 1, "seconds": 2.0, "val": metrics}])
        return SimpleNamespace(state=state, best_metrics=metrics)

    monkeypatch.setattr(training.train, "train", fake_train)
    monkeypatch.setattr(encoders.checkpoint, "load_model", lambda path: None)
    monkeypatch.setattr(training.pairs, "build_pairs", lambda *a, **k: SimpleNamespace(class_names=[]))
    monkeypatch.setattr(training.loaders, "cached_split_features", lambda *a, **k: None)
    monkeypatch.setattr(training.evaluate, "evaluate_cached", lambda *a, **k: metrics)
    config = TrainConfig(feature_cache=str(cache))
    first = train_ablation.run_variant(None, dataclasses.replace(config, seed=1), "f5-mask-soft", tmp_path / "s1")
    second = train_ablation.run_variant(None, dataclasses.replace(config, seed=2), "f5-mask-soft", tmp_path / "s2")
    assert first["built_feature_cache"] is True and second["built_feature_cache"] is False
