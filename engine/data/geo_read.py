"""Reading one chip of a GeoTIFF scene (``engine.data.geo_scenes.ChipSpec``) as 8-bit RGB, and a quicklook of a
whole scene for the gallery: windowed / decimated rasterio reads, never the whole scene.

Open datasets are cached per process (``MAX_OPEN_SCENES``), keyed by process id as well, because DataLoader
workers fork and a GDAL handle must not cross a fork; each process keeps one ``rasterio.Env`` open so GDAL's
messages go to logging instead of stderr.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from engine.data.geo_scenes import ChipSpec, open_raster
from engine.errors import DataError

MAX_OPEN_SCENES = 8  # open rasterio datasets kept per process by read_chip

_OPEN: dict[tuple[int, str], object] = {}
_ENV: dict[int, object] = {}  # one rasterio.Env per process, kept open: GDAL's messages go to logging, not stderr


def _cached(path: Path):
    """An open dataset per (process, path): DataLoader workers fork, and a handle must not cross a fork."""
    key = (os.getpid(), str(path))
    if os.getpid() not in _ENV:
        _ENV[os.getpid()] = _env().__enter__()
    dataset = _OPEN.get(key)
    if dataset is None:
        if len(_OPEN) >= MAX_OPEN_SCENES:
            oldest = next(iter(_OPEN))
            if oldest[0] == os.getpid():
                _OPEN[oldest].close()
            del _OPEN[oldest]
        dataset = _OPEN[key] = open_raster(path)
    return dataset


def chip_array(path: Path, chip: ChipSpec) -> np.ndarray:
    """The chip as an (out, out, 3) uint8 array; ``DataError`` when every pixel of it is nodata."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from engine.data.image_guard import check_size

    # the chip's decoded size passes the same limits as any image (--max-image-pixels); its window is read
    # windowed (and decimated when --gsd resamples), never the whole scene
    check_size(f"{path} chip at column {chip.col_off}, row {chip.row_off}", chip.out_size, chip.out_size)
    dataset = _cached(Path(path))
    resample = (chip.win_width, chip.win_height) != (chip.out_size, chip.out_size)
    data = dataset.read(list(chip.bands), window=Window(chip.col_off, chip.row_off, chip.win_width, chip.win_height),
                        out_shape=(len(chip.bands), chip.out_size, chip.out_size), masked=True,
                        resampling=Resampling.average if resample else Resampling.nearest)
    mask = np.ma.getmaskarray(data).any(axis=0) | ~np.all(np.isfinite(data.filled(0).astype(np.float64)), axis=0)
    if mask.all():
        raise DataError(f"{path}: empty chip at column {chip.col_off}, row {chip.row_off} (every pixel is nodata)")
    values = np.asarray(data.filled(0))
    if chip.scale is not None:
        low, high = chip.scale
        values = np.clip((values.astype(np.float64) - low) * (255.0 / (high - low)), 0, 255).round()
    values = values.astype(np.uint8)
    values[:, mask] = 0
    if values.shape[0] < 3:
        values = np.repeat(values[:1], 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(values, 0, -1))


def read_chip(path: Path, chip: ChipSpec):
    """The chip as an 8-bit RGB PIL image (what every model transform takes)."""
    from PIL import Image

    return Image.fromarray(chip_array(path, chip), mode="RGB")


def scene_quicklook(path: Path, bands: tuple[int, ...], scale: tuple[float, float] | None,
                    side: int = 512) -> tuple[np.ndarray, float]:
    """A small (h, w, 3) uint8 picture of the whole scene (decimated read) and its pixels-per-quicklook-pixel."""
    with open_raster(path) as dataset:
        factor = max(1.0, max(dataset.width, dataset.height) / side)
        shape = (len(bands), max(1, round(dataset.height / factor)), max(1, round(dataset.width / factor)))
        values = np.asarray(dataset.read(list(bands), out_shape=shape, masked=True).filled(0), dtype=np.float64)
    if scale is not None:
        values = (values - scale[0]) * (255.0 / (scale[1] - scale[0]))
    values = np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
    if values.shape[0] < 3:
        values = np.repeat(values[:1], 3, axis=0)
    return np.ascontiguousarray(np.moveaxis(values, 0, -1)), factor


def _env():
    import rasterio

    return rasterio.Env()
