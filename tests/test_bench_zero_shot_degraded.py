"""bench.zero_shot_degraded: degradations, the copies it scores, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.zero_shot_degraded import degrade, degraded_copy, parse_degradation
from engine.errors import ConfigError
from training_fixtures import write_scene_folders


def _photo(size: int = 150) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def test_degradations_do_what_they_say() -> None:
    original = _photo()
    assert degrade(original, "size:32").size == (32, 32)
    gray = np.asarray(degrade(original, "gray"))
    assert gray.shape == (150, 150, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    compressed = np.asarray(degrade(original, "jpeg:10")).astype(int)
    assert compressed.shape == (150, 150, 3) and np.abs(compressed - np.asarray(original)).mean() > 5
    assert parse_degradation("size:64") == ("size", 64) and parse_degradation("gray") == ("gray", None)


@pytest.mark.parametrize("spec", ["size", "size:4", "size:x", "jpeg:0", "jpeg:100", "gray:2", "blur:3", ""])
def test_bad_degradations_are_one_line(spec: str) -> None:
    with pytest.raises(ConfigError, match="expected size:N"):
        parse_degradation(spec)


def test_copy_keeps_every_relative_path_and_is_built_once(tmp_path) -> None:
    source = write_scene_folders(tmp_path / "scenes", per_class=2)
    copy = degraded_copy(source, "size:16", tmp_path / "work")
    listed = sorted(p.relative_to(source) for p in source.rglob("*.jpg"))
    assert sorted(p.relative_to(copy) for p in copy.rglob("*.jpg")) == listed
    with Image.open(copy / listed[0]) as image:
        assert image.size == (16, 16)
    stamp = (copy / listed[0]).stat().st_mtime_ns
    assert degraded_copy(source, "size:16", tmp_path / "work") == copy  # reused, not rebuilt
    assert (copy / listed[0]).stat().st_mtime_ns == stamp
    assert not list((tmp_path / "work").glob("*.partial"))
