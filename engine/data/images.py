"""Reading images the way every stage needs them: always 8-bit RGB, or a ``DataError`` naming the file.

Remote-sensing collections mix formats: UC Merced ships TIFFs, some GeoTIFF exports are 16-bit or float, scanned
products are grayscale or palette, PNG exports carry alpha. Models want 3x8-bit RGB, so conversion happens here,
once, with documented rules:

* grayscale / bilevel / CMYK / YCbCr / LAB / HSV: PIL's standard conversion to RGB;
* palette images: expanded through the palette (and its transparency, if any, handled as alpha below);
* alpha (RGBA, LA, PA, premultiplied): composited on **black**, i.e. transparent pixels become 0 -- the usual
  "no data" colour of remote-sensing products, and what a model trained on opaque tiles sees at image borders;
* 16-bit / 32-bit integer and float images (PIL modes ``I;16*``, ``I``, ``F``, or multi-band TIFFs that PIL
  cannot open, read with ``tifffile``): linearly stretched to 0..255 by **the image's own min..max** (over all
  bands together, so colour balance is kept). Sensors rarely use the full dtype range (12-bit data in 16-bit
  containers), so scaling by the dtype maximum would give nearly black images. A constant image maps to 0.
  Multi-band arrays keep the first three bands (a single band is repeated to grey).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.data.image_guard import ImageTooLarge, open_image, read_tiff, tiff_page_size
from engine.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_MAX_8BIT = 255.0
_RGB_BANDS = 3
_BITS_8 = 8
_TIFF_BITS_PER_SAMPLE = 258  # TIFF tag number
_STRETCH_BLOCK = 1 << 20  # samples converted to float64 at a time
# PIL's reading errors: OSError (truncated/corrupt), SyntaxError (broken PNG chunks), ValueError/TypeError
# (bad headers), EOFError (short GIF/TIFF), DecompressionBombError (absurd declared size).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageProbe:
    """What ``probe_image`` learned about one file: its size and original mode, or why it cannot be read."""

    path: Path
    width: int = 0
    height: int = 0
    mode: str = ""
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def needs_conversion(self) -> bool:
        return self.ok and self.mode != "RGB"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: image file not found")
    if not path.is_file():
        raise DataError(f"{path}: expected an image file, found a folder or special file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")


def _stretch_to_uint8(array: np.ndarray) -> np.ndarray:
    """Linear min..max stretch of a whole array to uint8 (see module docstring for why not the dtype max).

    Worked in row blocks: a float64 copy of the whole array would be 8 bytes per sample at once."""
    floating = np.issubdtype(array.dtype, np.floating)
    if floating:
        finite = np.isfinite(array)
        if not finite.any():
            return np.zeros(array.shape, dtype=np.uint8)
        low = float(np.min(array, where=finite, initial=np.inf))
        high = float(np.max(array, where=finite, initial=-np.inf))
    else:
        low, high = float(array.min()), float(array.max())
    out = np.zeros(array.shape, dtype=np.uint8)
    if high <= low:
        return out
    step = max(1, _STRETCH_BLOCK // max(1, array[:1].size))
    for start in range(0, array.shape[0], step):
        values = array[start:start + step].astype(np.float64)
        if floating:
            values = np.where(np.isfinite(values), values, low)
        scaled = (values - low) * (_MAX_8BIT / (high - low))
        out[start:start + step] = np.clip(np.rint(scaled), 0, _MAX_8BIT).astype(np.uint8)
    return out


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    """An (H, W) or (H, W, C) array of any numeric dtype as an RGB image."""
    if array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:  # planar (C, H, W) TIFFs
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"unsupported array shape {array.shape}")
    if array.shape[-1] >= _RGB_BANDS:
        array = array[:, :, :_RGB_BANDS]
    else:
        array = np.repeat(array[:, :, :1], _RGB_BANDS, axis=2)
    if array.dtype != np.uint8:
        array = _stretch_to_uint8(array)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode in _HIGH_DEPTH_MODES:
        return _array_to_rgb(np.asarray(image))
    return image.convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """An in-memory image (any PIL mode, alpha composited on black) as 8-bit RGB, as ``load_rgb`` reads files."""
    return _to_rgb(image).copy()


def _pil_drops_bits(image: Image.Image) -> bool:
    """True for multi-band TIFFs with more than 8 bits per sample: PIL keeps only the high byte of those."""
    if image.format != "TIFF" or image.mode in _HIGH_DEPTH_MODES:
        return False
    bits = image.tag_v2.get(_TIFF_BITS_PER_SAMPLE, (_BITS_8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    return any(int(value) > _BITS_8 for value in bits)


def _read_with_tifffile(path: Path) -> Image.Image:
    # only needed for TIFFs PIL cannot open (multi-band 16-bit, float RGB); sizes checked from the tags first
    return _array_to_rgb(np.asarray(read_tiff(path)))


def load_rgb(path: str | Path) -> Image.Image:
    """The fully decoded image as 8-bit RGB; ``DataError`` naming the path for missing/empty/corrupt files,
    ``ImageTooLarge`` (nothing decoded) for one whose header is over ``engine.data.image_guard``'s limits."""
    path = Path(path)
    _check_file(path)
    try:
        with open_image(path) as opened:
            if _pil_drops_bits(opened):
                return _read_with_tifffile(path)
            opened.load()  # force a full decode: a truncated file fails here, not later inside a batch
            return _to_rgb(opened).copy()
    except (UnidentifiedImageError, *_DECODE_ERRORS) as error:
        if path.suffix.lower() in TIFF_SUFFIXES:
            try:
                return _read_with_tifffile(path)
            except ImageTooLarge:
                raise
            except Exception:  # noqa: BLE001 -- report PIL's reason, which names the real problem
                pass
        raise DataError(f"{path}: cannot decode image ({_describe(error)})") from None


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) < 160 else text[:157] + "..."


def probe_image(path: str | Path, full_decode: bool = True) -> ImageProbe:
    """Size and mode of one image, or the reason it is unusable; never raises for a bad file.

    ``full_decode=False`` reads only the header (fast, misses truncated data); ``True`` decodes every
    pixel, which is what ``engine data check`` does by default because truncated downloads are common.
    """
    path = Path(path)
    try:
        _check_file(path)
    except DataError as error:
        return ImageProbe(path=path, problem=str(error).split(": ", 1)[1])
    try:
        with open_image(path) as opened:
            if _pil_drops_bits(opened):
                return _probe_with_tifffile(path) or ImageProbe(path=path, problem="cannot decode high bit-depth TIFF")
            width, height, mode = opened.width, opened.height, opened.mode
            if full_decode:
                opened.load()
        return ImageProbe(path=path, width=width, height=height, mode=mode)
    except ImageTooLarge as error:
        return ImageProbe(path=path, problem=str(error).split(": ", 1)[1])
    except (UnidentifiedImageError, *_DECODE_ERRORS) as error:
        if path.suffix.lower() in TIFF_SUFFIXES:
            fallback = _probe_with_tifffile(path)
            if fallback is not None:
                return fallback
        return ImageProbe(path=path, problem=f"cannot decode image ({_describe(error)})")


def _probe_with_tifffile(path: Path) -> ImageProbe | None:
    try:
        tiff_page_size(path)
    except ImageTooLarge as error:
        return ImageProbe(path=path, problem=str(error).split(": ", 1)[1])
    except Exception:  # noqa: BLE001 -- caller reports PIL's reason
        return None
    try:
        array = np.asarray(read_tiff(path))
    except Exception:  # noqa: BLE001 -- caller reports PIL's reason
        return None
    if array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:
        array = np.moveaxis(array, 0, -1)
    height, width = array.shape[:2]
    bands = array.shape[2] if array.ndim == 3 else 1
    return ImageProbe(path=path, width=width, height=height, mode=f"{array.dtype.name}x{bands}")
