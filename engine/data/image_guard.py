"""The one gate every image passes before its pixels are decoded: size limits read from the file's header.

A few hundred bytes of PNG or zlib-compressed TIFF can declare billions of pixels. Every stage that decodes an
image (``engine query --image``, uploads to ``engine serve``, ``engine index``, ``engine eval``, training
loaders, the gallery) reads it through ``engine.data.images``, which opens it only through this module:

* ``open_image(path)``: PIL's lazy open (header only), then ``check_size``; nothing is decoded on refusal.
  PIL's own bomb check is kept as a second line, set to the same limit (PIL refuses at twice it);
* ``read_tiff(path)``: the TIFF fallback (multi-band 16-bit, float) reads the tags of the first series with
  ``tifffile`` (width, length, the series' shape and data type) and checks them before ``asarray()``: the
  pixel count of one page, and the decoded bytes of the whole series (at most ``MAX_BYTES_PER_PIXEL`` per
  pixel, which bounds stacks of pages and many-band images);
* ``check_size``: refuses more than ``max_pixels`` pixels, a side over ``max_side``, or an aspect ratio over
  ``max_aspect``. The last one bounds the *resized* image: a 100000 x 5 strip passes any pixel count, but the
  model's resize of its short side to 224 would make it 224 x 4.5 million (gigabytes).

Refusal is ``ImageTooLarge`` (a ``DataError``: one ``error:`` line in the CLI, HTTP 413 in ``engine serve``).
Limits are process-wide (``configure``; ``--max-image-pixels`` on the commands that read images, or the
``ENGINE_MAX_IMAGE_PIXELS`` environment variable, which data-loader worker processes inherit).
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from engine.errors import DataError

MAX_PIXELS_ENV = "ENGINE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 8192 * 8192  # 67,108,864: 192 MiB as 8-bit RGB
DEFAULT_MAX_SIDE = 32768
DEFAULT_MAX_ASPECT = 32.0
MAX_PIXELS_HELP = (f"Refuse images whose header declares more pixels than this (default {DEFAULT_MAX_PIXELS:,} = "
                   f"8192 x 8192; also ${MAX_PIXELS_ENV}); sides over {DEFAULT_MAX_SIDE} and aspect ratios over "
                   f"{DEFAULT_MAX_ASPECT:g}:1 are refused too. Nothing over the limit is decoded.")
MAX_BYTES_PER_PIXEL = 16  # TIFF fallback: samples x bytes per sample of one decoded pixel (4 bands of float32)


class ImageTooLarge(DataError):
    """An image whose header declares more than the limits allow (nothing was decoded)."""

    http_status = 413


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = DEFAULT_MAX_SIDE
    max_aspect: float = DEFAULT_MAX_ASPECT

    def validate(self) -> "ImageLimits":
        if self.max_pixels < 1:
            raise DataError(f"--max-image-pixels must be a positive number of pixels, got {self.max_pixels}")
        return self


_configured: ImageLimits | None = None


def limits() -> ImageLimits:
    """The limits in force: ``configure``'s, else ``$ENGINE_MAX_IMAGE_PIXELS``, else the defaults."""
    if _configured is not None:
        return _configured
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return ImageLimits()
    if not value.isascii() or not value.isdigit():
        raise DataError(f"${MAX_PIXELS_ENV}={value[:40]!r}: expected a whole number of pixels")
    return ImageLimits(max_pixels=int(value)).validate()


def configure(max_pixels: int | None = None) -> ImageLimits:
    """Set the process-wide limits (``None`` keeps the current pixel limit); worker processes inherit them."""
    global _configured
    current = limits()
    chosen = replace(current, max_pixels=int(max_pixels)) if max_pixels is not None else current
    chosen.validate()
    _configured = chosen
    os.environ[MAX_PIXELS_ENV] = str(chosen.max_pixels)
    _sync_pil(chosen)
    return chosen


# PIL's own bomb limit as shipped; it also guards crops and resizes of already-decoded images (a 224 px model
# input counts), so it is only ever raised to follow a larger --max-image-pixels, never lowered below this.
_PIL_DEFAULT_MAX_PIXELS = 89_478_485


def _sync_pil(chosen: ImageLimits) -> None:
    from PIL import Image

    # the header check above refuses files over the limit before any decode; PIL's check stays a backstop
    Image.MAX_IMAGE_PIXELS = max(chosen.max_pixels, _PIL_DEFAULT_MAX_PIXELS)


def check_size(label: str | Path, width: int, height: int, depth: int = 1, bytes_per_pixel: int = 1,
               chosen: ImageLimits | None = None) -> None:
    """``ImageTooLarge`` naming ``label`` when a declared size is over the limits."""
    chosen = chosen or limits()
    width, height, depth = int(width), int(height), max(1, int(depth))
    pixels = width * height * depth
    problem = ""
    if width < 1 or height < 1:
        problem = "no pixels"
    elif pixels > chosen.max_pixels:
        problem = f"{pixels:,} pixels, over the limit of {chosen.max_pixels:,} (--max-image-pixels)"
    elif max(width, height) / min(width, height) > chosen.max_aspect:
        problem = (f"an aspect ratio of {max(width, height) / min(width, height):.0f}:1, over "
                   f"{chosen.max_aspect:g}:1 (resizing it for the model would take gigabytes)")
    elif max(width, height) > chosen.max_side:
        problem = f"a side over {chosen.max_side} pixels"
    elif pixels * bytes_per_pixel > chosen.max_pixels * MAX_BYTES_PER_PIXEL:
        problem = (f"{bytes_per_pixel} bytes per pixel ({pixels * bytes_per_pixel:,} bytes decoded, over "
                   f"{chosen.max_pixels * MAX_BYTES_PER_PIXEL:,})")
    if problem:
        size = f"{width} x {height}" + (f" x {depth}" if depth > 1 else "")
        if problem == "no pixels":
            raise DataError(f"{label}: the image header declares {size} pixels")
        raise ImageTooLarge(f"{label}: image of {size} pixels refused before decoding: {problem}")


@contextmanager
def open_image(path: Path) -> Iterator:
    """PIL's lazy open of ``path`` with its declared size checked; nothing is decoded here."""
    from PIL import Image

    chosen = limits()
    _sync_pil(chosen)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
    except Image.DecompressionBombError:
        if path.suffix.lower() in (".tif", ".tiff"):
            tiff_page_size(path, chosen)  # exact size from the tags (raises ImageTooLarge)
        raise ImageTooLarge(f"{path}: image refused before decoding: it declares more than "
                            f"{2 * chosen.max_pixels:,} pixels (limit {chosen.max_pixels:,}, --max-image-pixels)"
                            ) from None
    with opened:
        check_size(path, opened.width, opened.height, chosen=chosen)
        yield opened


def tiff_page_size(path: Path, chosen: ImageLimits | None = None) -> None:
    """Check what a TIFF's first series would decode to, from its tags only (``tifffile``)."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        _check_series(path, tiff.series[0], chosen)


def _check_series(path: Path, series, chosen: ImageLimits | None) -> None:
    page = series.pages[0] if series.pages else None
    if page is None:
        raise DataError(f"{path}: the TIFF has no image page")
    width, height = int(page.imagewidth), int(page.imagelength)
    elements = 1
    for size in series.shape:
        elements *= int(size)
    per_pixel = max(1, elements // max(1, width * height)) * max(1, series.dtype.itemsize)
    check_size(path, width, height, bytes_per_pixel=per_pixel, chosen=chosen)


def read_tiff(path: Path):
    """The first series of a TIFF as a numpy array, after its declared size passed ``check_size``."""
    import tifffile

    chosen = limits()
    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        _check_series(path, series, chosen)
        return series.asarray()
