"""Dihedral views and test-time view averaging: the group, the average, the model setting and its fingerprint."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import encoders
from encoders.views import VIEW_NAMES, apply_view, view_averaged
from engine.errors import ConfigError


def _grid(side: int = 5) -> torch.Tensor:
    return torch.arange(3 * side * side, dtype=torch.float32).reshape(1, 3, side, side)


def test_the_eight_views_are_distinct_pixel_permutations_closed_under_composition() -> None:
    grid = _grid()
    views = [apply_view(grid, view) for view in range(len(VIEW_NAMES))]
    assert len({tuple(view.flatten().tolist()) for view in views}) == 8
    for view in views:
        assert torch.equal(view.flatten().sort().values, grid.flatten().sort().values)
    keys = {tuple(view.flatten().tolist()) for view in views}
    for first in range(8):
        for second in range(8):
            assert tuple(apply_view(views[first], second).flatten().tolist()) in keys


def test_view_averaged_is_the_normalised_sum_and_one_view_is_untouched() -> None:
    torch.manual_seed(0)
    weights = torch.randn(3 * 25, 6)

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(pixels.flatten(1) @ weights, dim=-1)

    pixels = torch.randn(4, 3, 5, 5)
    assert torch.equal(view_averaged(encode, pixels, 1), encode(pixels))
    for views in (2, 5, 8):
        expected = F.normalize(sum(encode(apply_view(pixels, view)) for view in range(views)), dim=-1)
        torch.testing.assert_close(view_averaged(encode, pixels, views), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def model() -> encoders.PIRModel:
    torch.manual_seed(0)
    return encoders.create_model("tiny-test").eval()


def test_all_eight_views_make_the_image_embedding_rotation_invariant(model: encoders.PIRModel) -> None:
    torch.manual_seed(1)
    size = model.config.vision.image_size
    pixels = torch.randn(2, 3, size, size)
    rotated = apply_view(pixels, VIEW_NAMES.index("rot90"))
    with torch.no_grad():
        single = (model.encode_image(pixels), model.encode_image(rotated))
        model.set_test_time_views(8)
        averaged = (model.encode_image(pixels), model.encode_image(rotated))
        model.set_test_time_views(1)
    assert (single[0] - single[1]).abs().max() > 1e-3  # one view is not invariant, so the check below means something
    torch.testing.assert_close(averaged[0], averaged[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(averaged[0].norm(dim=-1), torch.ones(2))


def test_setting_is_validated_fingerprinted_and_saved(model: encoders.PIRModel, tmp_path) -> None:
    single = model.fingerprint()
    with pytest.raises(ConfigError, match="vision.test_time_views must be 1..8"):
        model.set_test_time_views(0)
    assert model.fingerprint() == single and model.config.vision.test_time_views == 1
    try:
        model.set_test_time_views(4)
        assert model.fingerprint() != single
        encoders.save_model(model, tmp_path / "model")
    finally:
        model.set_test_time_views(1)
    assert model.fingerprint() == single
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["model"]["vision"]["test_time_views"] == 4
    loaded = encoders.load_model(tmp_path / "model")
    assert loaded.config.vision.test_time_views == 4 and loaded.fingerprint() == saved["fingerprint"]


def test_checkpoints_written_before_the_setting_existed_load_with_one_view(model: encoders.PIRModel, tmp_path) -> None:
    encoders.save_model(model, tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    meta = json.loads(config_file.read_text())
    del meta["model"]["vision"]["test_time_views"]
    config_file.write_text(json.dumps(meta))
    assert encoders.load_model(tmp_path / "old").config.vision.test_time_views == 1
