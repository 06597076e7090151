"""GeoTIFF scenes as map-located chips: which chips a scene gives, where each one is, and reading one chip.

A scene (a georeferenced GeoTIFF / Cloud-Optimised GeoTIFF, any band count, 8/16-bit or float, any CRS pyproj
knows) is never read whole:

* planning (``plan_scene``) opens the file's header and one *decimated* read of at most ``QUICKLOOK_SIDE``
  pixels on its long side (served from the file's overviews when it has them). That read gives the per-scene
  scaling of 16-bit/float data (the ``SCALE_PERCENTILES`` of the valid values of the chosen bands, all bands
  together so colour balance is kept) and tells which chips are empty (every quicklook pixel of the chip is
  nodata, or 0 in every band when the file declares no nodata value): those are skipped and counted;
* each chip (``engine.data.geo_read.read_chip``) is one windowed read of its own pixels, resampled to ``chip_size`` when ``--gsd``
  asks for another ground resolution than the scene's.

Chip grid: windows of ``chip_size`` output pixels (``chip_size * gsd / scene_gsd`` scene pixels with ``--gsd``),
stepping by the window minus the overlap; the last column and row are shifted back to end at the scene's edge,
so every scene pixel is in some chip. Footprints: the window's outline in the scene CRS (4 corners) and in WGS84
(each edge densified to ``DENSIFY_POINTS`` points before the transform, so the bounding box of a UTM chip is
exact to well under a metre); the centre is the window centre transformed, not the middle of the WGS84 box.
Acquisition date: the TIFF ``DateTime``/``ACQUISITIONDATETIME`` tag when present, else an 8-digit date in the file
name as NAIP writes it (``..._20180716.tif``).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from engine.errors import ConfigError, DataError

TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_CHIP_SIZE = 224
QUICKLOOK_SIDE = 1024
SCALE_PERCENTILES = (2.0, 98.0)
DENSIFY_POINTS = 5  # points per edge (corners included): chips are small, their edges nearly straight in lon/lat
# GDAL's block cache defaults to 5 % of RAM per process, and every DataLoader worker has its own: bound it
# (megabytes) unless the user chose a value. Read by GDAL when the cache is first used.
os.environ.setdefault("GDAL_CACHEMAX", "64")
_DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})(\d{2})(\d{2})(?!\d)")
_DATE_TAGS = ("ACQUISITIONDATETIME", "TIFFTAG_DATETIME", "DATETIME", "ACQUISITION_DATE")


@dataclass(frozen=True)
class GeoOptions:
    """``engine index`` flags for scenes: chip size in output pixels (None = the model's input size), overlap
    in output pixels, the ground sample distance to resample to (None = the scene's own) and 1-based bands."""

    chip_size: int | None = None
    chip_overlap: int = 0
    gsd: float | None = None
    bands: tuple[int, ...] | None = None

    def validate(self) -> "GeoOptions":
        if self.chip_size is not None and self.chip_size < 8:
            raise ConfigError(f"--chip-size must be at least 8 pixels, got {self.chip_size}")
        if self.chip_overlap < 0:
            raise ConfigError(f"--chip-overlap must be 0 or more pixels, got {self.chip_overlap}")
        if self.chip_size is not None:  # a chip is decoded whole: the image limits (--max-image-pixels) apply
            from engine.data.image_guard import check_size

            check_size("--chip-size", self.chip_size, self.chip_size)
        if self.chip_size is not None and self.chip_overlap >= self.chip_size:
            raise ConfigError(f"--chip-overlap {self.chip_overlap} must be smaller than --chip-size {self.chip_size}")
        if self.gsd is not None and not (self.gsd > 0 and math.isfinite(self.gsd)):
            raise ConfigError(f"--gsd must be a positive number of metres per pixel, got {self.gsd}")
        if self.bands is not None and (not self.bands or len(self.bands) > 3 or min(self.bands) < 1):
            raise ConfigError(f"--bands takes 1 to 3 band numbers counted from 1 (e.g. 1,2,3), got "
                              f"{','.join(map(str, self.bands)) or 'nothing'}")
        return self


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """``--bands 4,1,2`` → (4, 1, 2); one line naming the flag for anything else."""
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--bands expects band numbers separated by commas (e.g. 1,2,3), got {text!r}") from None
    return bands


@dataclass(frozen=True)
class ChipSpec:
    """One chip: the window it reads, how its pixels become 8-bit RGB, and where it is on the map."""

    col_off: int
    row_off: int
    win_width: int
    win_height: int
    out_size: int
    bands: tuple[int, ...]
    scale: tuple[float, float] | None  # (low, high) stretched to 0..255; None = 8-bit data used as is
    nodata: float | None
    crs: str
    footprint: list[list[float]]  # scene-CRS ring, 5 points (closed)
    footprint_wgs84: list[list[float]]  # WGS84 lon/lat ring, densified and closed
    lon_min: float
    lat_min: float
    lon_max: float
    lat_max: float
    lon: float
    lat: float
    gsd: float  # metres per chip pixel
    acquired: str | None = None  # ISO date

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ChipSpec":
        values = json.loads(text)
        values["bands"] = tuple(values["bands"])
        values["scale"] = tuple(values["scale"]) if values["scale"] is not None else None
        return cls(**values)


@dataclass
class SceneReport:
    """What planning found: chips per scene, empty chips skipped, and .tif files without georeferencing."""

    scenes: int = 0
    chips: int = 0
    empty_chips: int = 0
    plain_tiffs: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        lines = []
        if self.scenes:
            lines.append(f"{self.scenes} GeoTIFF scene(s) cut into {self.chips} chips; {self.empty_chips} empty "
                         "chips (all nodata) skipped")
        if self.plain_tiffs:
            more = f" and {len(self.plain_tiffs) - 1} more" if len(self.plain_tiffs) > 1 else ""
            lines.append(f"{self.plain_tiffs[0]}{more}: no georeferencing; indexed as plain image(s), "
                         "without a footprint")
        return lines


def _rasterio():
    try:
        import rasterio
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ConfigError("GeoTIFF scenes need rasterio: pip install rasterio pyproj") from None
    return rasterio


def open_raster(path: Path):
    """rasterio dataset of ``path`` with the not-georeferenced warning silenced (callers decide what it means)."""
    rasterio = _rasterio()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            return rasterio.open(path)
        except rasterio.errors.RasterioIOError as error:
            raise DataError(f"{path}: cannot open as a raster ({str(error).splitlines()[0]})") from None


def is_georeferenced(dataset) -> bool:
    return dataset.crs is not None and not dataset.transform.is_identity


def looks_like_scene(path: Path) -> bool:
    """A .tif/.tiff that rasterio opens and that carries a CRS and a geotransform."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    try:
        with open_raster(path) as dataset:
            return is_georeferenced(dataset)
    except DataError:
        return False


# -- planning -----------------------------------------------------------------------------------------------
def _to_wgs84(crs, path: Path):
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError, ProjError

    try:
        source = CRS.from_user_input(crs.to_wkt())
        return Transformer.from_crs(source, CRS.from_epsg(4326), always_xy=True)
    except (CRSError, ProjError) as error:
        raise DataError(f"{path}: unknown CRS ({crs.to_string()[:80] or 'empty'}): cannot be transformed to "
                        f"WGS84 ({str(error).splitlines()[0][:120]})") from None


def _crs_name(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def default_bands(dataset, path: Path) -> tuple[int, ...]:
    """Red, green, blue from the colour interpretation when the file says so; else bands 1-3 (NAIP's RGBN and
    most exports put RGB first); a 1- or 2-band file gives its first band as grey."""
    from rasterio.enums import ColorInterp

    interp = list(dataset.colorinterp)
    wanted = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    if all(colour in interp for colour in wanted):
        return tuple(interp.index(colour) + 1 for colour in wanted)
    return (1, 2, 3) if dataset.count >= 3 else (1,)


def acquisition_date(dataset, path: Path) -> str | None:
    tags = {key.upper(): value for key, value in dataset.tags().items()}
    for key in _DATE_TAGS:
        match = re.match(r"\s*(\d{4})[:\-/]?(\d{2})[:\-/]?(\d{2})", tags.get(key, ""))
        if match and _valid_date(*match.groups()):
            return _valid_date(*match.groups())
    for match in _DATE_IN_NAME.finditer(path.stem):
        if _valid_date(*match.groups()):
            return _valid_date(*match.groups())
    return None


def _valid_date(year: str, month: str, day: str) -> str | None:
    try:
        return date(int(year), int(month), int(day)).isoformat()
    except ValueError:
        return None


def _pixel_metres(dataset, transformer) -> float:
    """Ground size of one scene pixel in metres: the pixel size in a projected CRS's own linear unit (what the
    product states, e.g. NAIP's 5 m), else geodesic at the scene centre (geographic CRSs, degrees)."""
    from pyproj import Geod

    if dataset.crs.is_projected and dataset.crs.linear_units_factor[1] > 0:
        return float((abs(dataset.res[0]) + abs(dataset.res[1])) / 2 * dataset.crs.linear_units_factor[1])

    centre_col, centre_row = dataset.width / 2, dataset.height / 2
    points = [dataset.transform @ (centre_col, centre_row), dataset.transform @ (centre_col + 1, centre_row),
              dataset.transform @ (centre_col, centre_row + 1)]
    lons, lats = transformer.transform([p[0] for p in points], [p[1] for p in points])
    geod = Geod(ellps="WGS84")
    _, _, across = geod.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, down = geod.inv(lons[0], lats[0], lons[2], lats[2])
    return float((abs(across) + abs(down)) / 2)


def _starts(length: int, window: int, step: int) -> list[int]:
    starts = list(range(0, length - window + 1, step))
    if starts[-1] + window < length:
        starts.append(length - window)  # the last chip ends at the scene edge
    return starts


def _quicklook(dataset, bands: tuple[int, ...]) -> tuple[np.ma.MaskedArray, float]:
    """A decimated masked read of ``bands`` (long side at most QUICKLOOK_SIDE) and its decimation factor."""
    factor = max(1.0, max(dataset.width, dataset.height) / QUICKLOOK_SIDE)
    shape = (len(bands), max(1, round(dataset.height / factor)), max(1, round(dataset.width / factor)))
    data = dataset.read(list(bands), out_shape=shape, masked=True)
    if dataset.nodata is None:  # no declared nodata: a pixel that is 0 in every band counts as empty
        zero = np.all(np.asarray(data.filled(0)) == 0, axis=0)
        data = np.ma.masked_array(data, mask=np.ma.getmaskarray(data) | zero[None])
    nonfinite = ~np.isfinite(np.asarray(data.filled(0), dtype=np.float64))
    data = np.ma.masked_array(data, mask=np.ma.getmaskarray(data) | nonfinite)
    return data, factor


def _scaling(data: np.ma.MaskedArray, dtype: str) -> tuple[float, float] | None:
    if dtype == "uint8":
        return None
    valid = data.compressed().astype(np.float64)
    if valid.size == 0:
        return (0.0, 1.0)
    low, high = np.percentile(valid, SCALE_PERCENTILES)
    return (float(low), float(high) if high > low else float(low) + 1.0)


def _ring(points_x, points_y) -> list[list[float]]:
    ring = [[float(x), float(y)] for x, y in zip(points_x, points_y)]
    return ring + [ring[0]]


def _outline(col: float, row: float, width: float, height: float, steps: int) -> list[tuple[float, float]]:
    """Pixel-space outline of a window, clockwise from the top-left corner, ``steps`` segments per edge."""
    fractions = [index / steps for index in range(steps)]
    top = [(col + width * f, row) for f in fractions]
    right = [(col + width, row + height * f) for f in fractions]
    bottom = [(col + width * (1 - f), row + height) for f in fractions]
    left = [(col, row + height * (1 - f)) for f in fractions]
    return top + right + bottom + left


def window_footprint(transform, transformer, col: int, row: int, width: int, height: int) -> dict:
    """Footprint of a pixel window in the scene CRS and in WGS84 (densified), its WGS84 box and centre."""
    corners = [transform @ point for point in _outline(col, row, width, height, 1)]
    dense = [transform @ point for point in _outline(col, row, width, height, DENSIFY_POINTS - 1)]
    lons, lats = transformer.transform([p[0] for p in dense], [p[1] for p in dense])
    lons, lats = np.asarray(lons, np.float64), np.asarray(lats, np.float64)
    if not (np.all(np.isfinite(lons)) and np.all(np.isfinite(lats))):
        raise DataError("footprint falls outside the CRS's valid area")
    centre = transform @ (col + width / 2, row + height / 2)
    centre_lon, centre_lat = transformer.transform(centre[0], centre[1])
    return {"footprint": _ring([p[0] for p in corners], [p[1] for p in corners]),
            "footprint_wgs84": _ring(lons, lats),
            "lon_min": float(lons.min()), "lat_min": float(lats.min()), "lon_max": float(lons.max()),
            "lat_max": float(lats.max()), "lon": float(centre_lon), "lat": float(centre_lat)}


def plan_scene(path: Path, options: GeoOptions, chip_size: int, report: SceneReport) -> list[ChipSpec]:
    """The chips of one scene (empty ones left out and counted in ``report``); ``DataError``/``ConfigError`` for
    a scene that cannot be chipped as asked (unknown CRS, bands it lacks, chip larger than the scene)."""
    if options.chip_overlap >= chip_size:
        raise ConfigError(f"--chip-overlap {options.chip_overlap} must be smaller than the chip size {chip_size}")
    with open_raster(path) as dataset:
        transformer = _to_wgs84(dataset.crs, path)
        bands = options.bands or default_bands(dataset, path)
        if max(bands) > dataset.count:
            raise ConfigError(f"{path}: --bands {','.join(map(str, bands))} asks for band {max(bands)}, the file has "
                              f"{dataset.count} band(s)")
        scene_gsd = _pixel_metres(dataset, transformer)
        factor = (options.gsd / scene_gsd) if options.gsd else 1.0
        window = max(1, round(chip_size * factor))
        overlap = round(options.chip_overlap * factor)
        if window > dataset.width or window > dataset.height:
            how = f" at --gsd {options.gsd:g} ({window} scene pixels)" if options.gsd else ""
            raise ConfigError(f"{path}: chip size {chip_size}{how} is larger than the scene ({dataset.width} x "
                              f"{dataset.height} px); pass a --chip-size of at most "
                              f"{int(min(dataset.width, dataset.height) / factor)}")
        quicklook, decimation = _quicklook(dataset, bands)
        scale = _scaling(quicklook, dataset.dtypes[bands[0] - 1])
        empty_mask = np.ma.getmaskarray(quicklook).all(axis=0)
        acquired = acquisition_date(dataset, path)
        crs = _crs_name(dataset.crs)
        chips: list[ChipSpec] = []
        step = max(1, window - overlap)
        for row in _starts(dataset.height, window, step):
            for col in _starts(dataset.width, window, step):
                if _is_empty(empty_mask, decimation, col, row, window):
                    report.empty_chips += 1
                    continue
                try:
                    where = window_footprint(dataset.transform, transformer, col, row, window, window)
                except DataError as error:
                    raise DataError(f"{path}: chip at column {col}, row {row}: {error}") from None
                chips.append(ChipSpec(col_off=col, row_off=row, win_width=window, win_height=window,
                                      out_size=chip_size, bands=tuple(bands), scale=scale,
                                      nodata=dataset.nodata, crs=crs, gsd=scene_gsd * factor, acquired=acquired,
                                      **where))
    report.scenes += 1
    report.chips += len(chips)
    return chips


def _is_empty(mask: np.ndarray, decimation: float, col: int, row: int, window: int) -> bool:
    top, left = int(row / decimation), int(col / decimation)
    bottom = max(top + 1, math.ceil((row + window) / decimation))
    right = max(left + 1, math.ceil((col + window) / decimation))
    return bool(mask[top:bottom, left:right].all())
