"""Background masking: numerics of hard/soft, flag validation, mask files, and the built-in foreground estimate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import indexing_fakes
from engine.data.masking import (MaskOptions, apply_mask, check_masks_present, estimate_foreground,
                                 foreground_from_saliency, load_mask, mask_options, otsu_threshold)
from engine.errors import ConfigError, DataError


def test_hard_and_soft_numerics() -> None:
    rgb = np.full((2, 2, 3), 200, dtype=np.uint8)
    rgb[0, 0] = (10, 101, 255)
    foreground = np.array([[False, True], [True, True]])
    hard = apply_mask(rgb, foreground, MaskOptions("hard"))
    assert hard[0, 0].tolist() == [0, 0, 0] and (hard[foreground] == 200).all()
    soft = apply_mask(rgb, foreground, MaskOptions("soft", sigma=0.2))
    assert soft[0, 0].tolist() == [2, 20, 51]  # rint(10·0.2, 101·0.2, 255·0.2)
    assert (soft[foreground] == 200).all()
    assert apply_mask(rgb, foreground, MaskOptions()) is rgb


@pytest.mark.parametrize("sigma", [0.0, 1.0, -0.1, 1.5])
def test_sigma_must_be_inside_open_interval(sigma: float) -> None:
    with pytest.raises(ConfigError, match="--sigma must be strictly between 0 and 1"):
        mask_options("soft", sigma, None)


def test_mask_option_validation(tmp_path: Path) -> None:
    assert mask_options("soft", 0.3, None) == MaskOptions("soft", 0.3, None)
    assert mask_options("hard", 0.2, tmp_path).sigma is None  # sigma only applies to soft masking
    with pytest.raises(ConfigError, match="--mask: expected one of none, hard, soft"):
        mask_options("blur", 0.2, None)
    with pytest.raises(ConfigError, match="--masks .*folder not found"):
        mask_options("hard", 0.2, tmp_path / "absent")
    with pytest.raises(ConfigError, match="--mask none"):
        mask_options("none", 0.2, tmp_path)


def test_missing_masks_are_listed(tmp_path: Path) -> None:
    images = [tmp_path / f"a{n}.jpg" for n in range(8)]
    Image.new("L", (4, 4), 255).save(tmp_path / "a0.png")
    with pytest.raises(DataError, match=r"7 of 8 masks missing: a1.png, a2.png, a3.png, a4.png, a5.png and 2 more"):
        check_masks_present(tmp_path, images)


def test_mask_of_other_size_is_resized_nearest(tmp_path: Path) -> None:
    mask = np.zeros((2, 2), dtype=np.uint8)
    mask[0, 1] = 7  # any non-zero value is foreground
    Image.fromarray(mask).save(tmp_path / "m.png")
    foreground, resized = load_mask(tmp_path / "m.png", 4, 4)
    assert resized
    assert foreground.tolist() == [[False, False, True, True]] * 2 + [[False] * 4] * 2
    assert load_mask(tmp_path / "m.png", 2, 2)[1] is False


def test_otsu_and_saliency_grid_upsampling() -> None:
    grid = np.array([[0.1, 0.9], [0.2, 0.8]])
    assert 0.2 < otsu_threshold(grid) <= 0.8
    assert foreground_from_saliency(grid, 4, 2).tolist() == [[False, False, True, True]] * 2
    assert foreground_from_saliency(np.full((3, 3), 0.5), 5, 5).all()  # no contrast: keep everything


def test_builtin_estimate_finds_a_bright_object_on_noisy_ground() -> None:
    noise = np.random.default_rng(0).normal(90, 6, (128, 128, 3))
    rgb = noise.clip(0, 255).astype(np.uint8)  # textured ground
    rgb[48:80, 48:80] = (240, 240, 240)  # a building-like square in the middle
    foreground = estimate_foreground(rgb)
    assert foreground.shape == (128, 128)
    inside = foreground[52:76, 52:76].mean()
    corners = np.concatenate([foreground[:24, :24].ravel(), foreground[-24:, -24:].ravel()]).mean()
    assert inside > 0.9 and corners < 0.05 and 0.03 < foreground.mean() < 0.2
    assert estimate_foreground(np.full((40, 40, 3), 77, np.uint8)).all()  # flat image: nothing is masked


@pytest.fixture()
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    import encoders

    monkeypatch.setattr(encoders, "load_model", indexing_fakes.fake_load_model, raising=False)


def test_masked_index_records_mode_warns_on_resize_and_differs(tmp_path: Path, fake_encoder, capsys) -> None:
    pytest.importorskip("faiss")
    from engine.cli import main

    folder, masks = tmp_path / "imgs", tmp_path / "masks"
    paths = indexing_fakes.write_images(folder, 3, side=20)
    masks.mkdir()
    for number, path in enumerate(paths):
        side = 10 if number == 0 else 20
        Image.fromarray(np.pad(np.full((side // 2, side // 2), 255, np.uint8), (0, side // 2))).save(
            masks / f"{path.stem}.png")
    common = ["--model", "fake-1", "--workers", "0"]
    assert main(["index", str(folder), "--out", str(tmp_path / "plain"), *common]) == 0
    assert main(["index", str(folder), "--out", str(tmp_path / "soft"), *common, "--mask", "soft",
                 "--sigma", "0.25", "--masks", str(masks)]) == 0
    assert "warning: mask" in capsys.readouterr().err
    shard = pq.read_schema(tmp_path / "soft" / "shards" / "part-00000.parquet").metadata
    assert shard[b"engine.mask_mode"] == b"soft" and shard[b"engine.mask_sigma"] == b"0.25"
    config = json.loads((tmp_path / "soft" / "index.json").read_text())
    assert config["mask"]["mode"] == "soft" and config["mask"]["sigma"] == 0.25
    plain = np.asarray(pq.read_table(tmp_path / "plain" / "shards").column("embedding").to_pylist())
    soft = np.asarray(pq.read_table(tmp_path / "soft" / "shards").column("embedding").to_pylist())
    assert not np.allclose(plain, soft)
    (masks / f"{paths[1].stem}.png").unlink()
    assert main(["index", str(folder), "--out", str(tmp_path / "hard"), *common, "--mask", "hard",
                 "--masks", str(masks)]) == 2
    assert f"1 of 3 masks missing: {paths[1].stem}.png" in capsys.readouterr().err
    assert main(["index", str(folder), "--out", str(tmp_path / "builtin"), *common, "--mask", "hard"]) == 0
    builtin = json.loads((tmp_path / "builtin" / "index.json").read_text())["mask"]
    assert builtin == {"mode": "hard", "sigma": None, "masks_dir": None}
