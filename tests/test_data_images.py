"""``load_rgb`` / ``probe_image``: every supported mode ends as 8-bit RGB; broken files raise one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.data.images import load_rgb, probe_image
from engine.errors import DataError

from data_helpers import make_image


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "YCbCr", "I;16"])
def test_single_and_other_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    suffix = ".tif" if mode in ("CMYK", "YCbCr", "I;16") else ".png"
    path = tmp_path / f"image{suffix}"
    Image.new(mode, (7, 5)).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (7, 5)


def test_grayscale_keeps_its_value(tmp_path: Path) -> None:
    pixels = _pixels(load_rgb(make_image(tmp_path / "g.png", mode="L", shade=77)))
    assert (pixels == 77).all()


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :2, 3] = 255  # left half opaque red, right half fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    pixels = _pixels(load_rgb(path))
    assert (pixels[:, :2, 0] == 200).all()
    assert (pixels[:, 2:] == 0).all()


def test_palette_with_transparency_is_composited(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 4), 1)
    palette_image.putpalette([10, 10, 10, 250, 0, 0] + [0] * 762)
    path = tmp_path / "palette.png"
    palette_image.save(path, transparency=1)
    assert (_pixels(load_rgb(path)) == 0).all()
    Image.new("P", (4, 4), 1).save(tmp_path / "plain.png")
    assert load_rgb(tmp_path / "plain.png").mode == "RGB"


def test_sixteen_bit_gray_is_stretched_by_its_own_range(tmp_path: Path) -> None:
    values = np.array([[1000, 2000], [3000, 4095]], dtype=np.uint16)  # 12-bit data in a 16-bit container
    path = tmp_path / "dem.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    pixels = _pixels(load_rgb(path))
    assert pixels[0, 0, 0] == 0 and pixels[1, 1, 0] == 255
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_multiband_sixteen_bit_tiff_keeps_three_bands(tmp_path: Path) -> None:
    bands = np.zeros((6, 6, 4), dtype=np.uint16)
    bands[..., 0], bands[..., 1], bands[..., 2], bands[..., 3] = 4000, 2000, 0, 60000
    path = tmp_path / "rgbn.tif"
    tifffile.imwrite(path, bands, photometric="rgb", extrasamples=["unspecified"])
    pixels = _pixels(load_rgb(path))
    # Stretched jointly over the three kept bands (0..4000): colour ratios survive, the NIR band is dropped.
    assert tuple(pixels[0, 0]) == (255, 128, 0)
    assert probe_image(path).ok


def test_float_tiff_is_stretched(tmp_path: Path) -> None:
    path = tmp_path / "reflectance.tif"
    tifffile.imwrite(path, np.linspace(-0.5, 0.5, 16, dtype=np.float32).reshape(4, 4))
    pixels = _pixels(load_rgb(path))
    assert pixels.min() == 0 and pixels.max() == 255


def test_missing_empty_and_corrupt_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_rgb(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg: image file is empty"):
        load_rgb(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    with pytest.raises(DataError, match=r"junk\.jpg: cannot decode"):
        load_rgb(tmp_path / "junk.jpg")


def test_truncated_jpeg_fails_on_full_decode_only(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot decode image \(image file is truncated"):
        load_rgb(cut)
    assert probe_image(cut, full_decode=False).ok  # the header alone looks fine
    probe = probe_image(cut)
    assert not probe.ok and "truncated" in (probe.problem or "")
    good = probe_image(full)
    assert (good.width, good.height, good.mode) == (64, 64, "RGB") and not good.needs_conversion


def test_probe_reports_conversion_needed(tmp_path: Path) -> None:
    probe = probe_image(make_image(tmp_path / "g.png", mode="L"))
    assert probe.ok and probe.needs_conversion and probe.mode == "L"
