"""Where each chip of a GeoTIFF scene is, as catalog columns (and the plan column that lets a resumed build read
the same windows).

Image shards holding at least one chip get these columns after the usual ones (plain images in such a shard
have nulls; shards without chips do not have them, and the catalog reads all shards by column name):

* ``scene`` (the scene file, relative to the data root, like ``path``), ``col_off``, ``row_off``,
  ``win_width``, ``win_height`` (the pixel window of the scene), ``crs`` (``EPSG:n`` or WKT);
* ``footprint``: the window's outline in the scene CRS as WKT, ``footprint_wgs84``: in WGS84 lon/lat (WKT,
  densified edges);
* ``lon_min``, ``lat_min``, ``lon_max``, ``lat_max`` (WGS84 box of the footprint), ``lon``, ``lat`` (centre),
  ``gsd`` (metres per chip pixel), ``acquired`` (DATE, null when neither tags nor file name carry one);
* ``chip_spec``: the whole ``ChipSpec`` as JSON (bands and scaling: how the gallery re-reads the chip).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.data.geo_scenes import ChipSpec

PLAN_COLUMN = "chip"
GEO_COLUMNS = ("scene", "col_off", "row_off", "win_width", "win_height", "crs", "footprint", "footprint_wgs84",
               "lon_min", "lat_min", "lon_max", "lat_max", "lon", "lat", "gsd", "acquired", "chip_spec")
FLOAT_COLUMNS = ("lon_min", "lat_min", "lon_max", "lat_max", "lon", "lat", "gsd")
INT_COLUMNS = ("col_off", "row_off", "win_width", "win_height")


def chip_plan_column(images: list) -> dict[str, pa.Array]:
    """The plan's ``chip`` column (ChipSpec JSON per row) when any planned image is a chip, else nothing."""
    if not any(image.chip is not None for image in images):
        return {}
    return {PLAN_COLUMN: pa.array([image.chip.to_json() if image.chip is not None else None for image in images],
                                  pa.string())}


def planned_chip_columns(plan_file: Path) -> list[str]:
    return [PLAN_COLUMN] if PLAN_COLUMN in pq.read_schema(plan_file).names else []


def chips_from_plan(columns: dict[str, list], rows: int) -> list[ChipSpec | None]:
    values = columns.get(PLAN_COLUMN) or [None] * rows
    return [ChipSpec.from_json(text) if text else None for text in values]


def wkt_polygon(ring: list[list[float]]) -> str:
    return "POLYGON ((" + ", ".join(f"{x!r} {y!r}" for x, y in ring) + "))"


def with_geo_columns(table: pa.Table, paths: list[str], chips: list[ChipSpec | None]) -> pa.Table:
    """``table`` (an image shard's rows) with the geo columns appended, row for row."""
    def column(name: str) -> list:
        return [getattr(chip, name) if chip is not None else None for chip in chips]

    arrays: dict[str, pa.Array] = {
        "scene": pa.array([path if chip is not None else None for path, chip in zip(paths, chips)], pa.string())}
    for name in INT_COLUMNS:
        arrays[name] = pa.array(column(name), pa.int32())
    arrays["crs"] = pa.array(column("crs"), pa.string())
    arrays["footprint"] = pa.array([wkt_polygon(chip.footprint) if chip else None for chip in chips], pa.string())
    arrays["footprint_wgs84"] = pa.array([wkt_polygon(chip.footprint_wgs84) if chip else None for chip in chips],
                                         pa.string())
    for name in FLOAT_COLUMNS:
        arrays[name] = pa.array(column(name), pa.float64())
    arrays["acquired"] = pa.array([date.fromisoformat(chip.acquired) if chip and chip.acquired else None
                                   for chip in chips], pa.date32())
    arrays["chip_spec"] = pa.array([chip.to_json() if chip else None for chip in chips], pa.string())
    for name in GEO_COLUMNS:
        table = table.append_column(name, arrays[name])
    return table
