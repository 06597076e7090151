"""Search by place: ``--bbox W,S,E,N`` and ``--near LON,LAT --radius-km R`` (WGS84), and the map columns of hits.

Both select chips of GeoTIFF scenes (``indexing.geo_rows``) before the k-NN search, like ``--where`` (with which
they combine by AND), in the same step: on the request's own thread, before the model thread or a batch, within
the filter time budget (``MetadataStore.place_ids``):

* ``--bbox``: chips whose WGS84 footprint intersects the box: SQL picks the chips whose footprint *box*
  intersects it, then each candidate's footprint polygon is tested against the box (separating axes over the
  polygon's edge normals), so a UTM chip tilted against the meridians is not returned for a box that only its
  bounding box touches. A box crossing the antimeridian is not supported;
* ``--near``: chips whose footprint box comes within ``R`` km of the point (great-circle distance from the point
  to the nearest point of the box, so the chip containing the point always qualifies).

The SQL here is this module's own, with the numbers bound as parameters; it never contains user text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.errors import ConfigError, EngineError

EARTH_RADIUS_KM = 6371.0088
HIT_COLUMNS = ("scene", "col_off", "row_off", "win_width", "win_height", "crs", "footprint_wgs84", "lon_min",
               "lat_min", "lon_max", "lat_max", "lon", "lat", "gsd", "acquired", "chip_spec")


@dataclass(frozen=True)
class GeoFilter:
    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north
    near: tuple[float, float] | None = None  # lon, lat
    radius_km: float | None = None

    def describe(self) -> str:
        parts = []
        if self.bbox:
            parts.append("bbox " + ",".join(f"{value:g}" for value in self.bbox))
        if self.near:
            parts.append(f"within {self.radius_km:g} km of {self.near[0]:g},{self.near[1]:g}")
        return " and ".join(parts)


def _numbers(text: str, count: int, flag: str, form: str) -> list[float]:
    try:
        values = [float(part) for part in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(value) for value in values):
        raise ConfigError(f"{flag} expects {form} ({count} numbers separated by commas), got {text!r}")
    return values


def _check_lon_lat(lon: float, lat: float, flag: str) -> None:
    if not -180.0 <= lon <= 180.0 or not -90.0 <= lat <= 90.0:
        raise ConfigError(f"{flag}: longitude must be within -180..180 and latitude within -90..90 (WGS84 degrees), "
                          f"got {lon:g},{lat:g}")


def parse_geo_filter(bbox: str | None, near: str | None, radius_km: float | str | None) -> GeoFilter | None:
    """The place filter of ``--bbox``/``--near``/``--radius-km`` (None when none is given); one line per mistake."""
    box = None
    if bbox is not None:
        west, south, east, north = _numbers(bbox, 4, "--bbox", "W,S,E,N in WGS84 degrees")
        _check_lon_lat(west, south, "--bbox")
        _check_lon_lat(east, north, "--bbox")
        if west > east:
            raise ConfigError(f"--bbox {bbox}: west {west:g} is east of east {east:g}; give W,S,E,N with W <= E "
                              "(boxes across the antimeridian are not supported)")
        if south > north:
            raise ConfigError(f"--bbox {bbox}: south {south:g} is north of north {north:g}; give W,S,E,N with S <= N")
        box = (west, south, east, north)
    point = None
    if near is not None:
        lon, lat = _numbers(near, 2, "--near", "LON,LAT in WGS84 degrees")
        _check_lon_lat(lon, lat, "--near")
        point = (lon, lat)
        if radius_km is None:
            raise ConfigError("--near needs --radius-km R (kilometres)")
    if radius_km is not None:
        try:
            radius = float(radius_km)
        except (TypeError, ValueError):
            raise ConfigError(f"--radius-km must be a number of kilometres, got {radius_km!r}") from None
        if point is None:
            raise ConfigError("--radius-km needs --near LON,LAT")
        if not (radius > 0 and math.isfinite(radius)):
            raise ConfigError(f"--radius-km must be a positive number of kilometres, got {radius_km}")
    else:
        radius = None
    if box is None and point is None:
        return None
    return GeoFilter(bbox=box, near=point, radius_km=radius)


def _require_geo(catalog) -> None:
    if not getattr(catalog, "has_geo", False):
        raise EngineError(f"{catalog.index_dir}: this index has no map-located chips (no lon/lat columns); "
                          "--bbox and --near need an index of GeoTIFF scenes (docs/geo.md)")


def matching_ids(store, geo: GeoFilter, budget_s: float | None = None) -> np.ndarray:
    """Sorted ids of the chips that the place filter selects, on this thread's cursor; the SQL step is
    interrupted after ``budget_s`` seconds like a ``--where`` filter (``indexing.filter_guard``; None or 0: no
    limit)."""
    from indexing.filter_guard import rows_with_budget

    _require_geo(store.catalog)
    conditions, params = ["lon_min IS NOT NULL"], {}
    if geo.bbox is not None:
        conditions.append("lon_max >= $west AND lon_min <= $east AND lat_max >= $south AND lat_min <= $north")
        params.update(west=geo.bbox[0], south=geo.bbox[1], east=geo.bbox[2], north=geo.bbox[3])
    if geo.near is not None:
        # haversine from the point to the nearest point of the footprint box
        conditions.append(
            "2 * $radius_earth * asin(sqrt(pow(sin(radians(greatest(lat_min, least($lat, lat_max)) - $lat) / 2), 2)"
            " + cos(radians($lat)) * cos(radians(greatest(lat_min, least($lat, lat_max))))"
            " * pow(sin(radians(greatest(lon_min, least($lon, lon_max)) - $lon) / 2), 2))) <= $radius")
        params.update(lon=geo.near[0], lat=geo.near[1], radius=geo.radius_km, radius_earth=EARTH_RADIUS_KM)
    sql = f"SELECT image_id, footprint_wgs84 FROM images WHERE {' AND '.join(conditions)} ORDER BY image_id"
    rows = rows_with_budget(store.cursor(), sql, budget_s, geo.describe(), params)
    if geo.bbox is not None:
        rows = [row for row in rows if polygon_meets_box(_ring(row[1]), geo.bbox)]
    return np.asarray([row[0] for row in rows], dtype=np.int64)


def _ring(wkt: str) -> np.ndarray:
    inner = wkt.strip().removeprefix("POLYGON").strip().strip("()")
    return np.asarray([[float(value) for value in pair.split()] for pair in inner.split(",")], dtype=np.float64)


def polygon_meets_box(ring: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    """True when the polygon (closed ring of a convex or nearly convex footprint) and the box touch or overlap.

    Separating axes: the box's own axes, then every edge normal of the polygon; any axis on which the two
    projections do not overlap separates them. (For a slightly concave ring this can only err towards "meets".)"""
    west, south, east, north = box
    if ring[:, 0].max() < west or ring[:, 0].min() > east or ring[:, 1].max() < south or ring[:, 1].min() > north:
        return False
    corners = np.array([[west, south], [east, south], [east, north], [west, north]])
    edges = np.diff(ring, axis=0)
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
    normals = normals[np.hypot(normals[:, 0], normals[:, 1]) > 0]
    polygon = ring @ normals.T  # (points, axes)
    rectangle = corners @ normals.T
    return not bool(np.any((polygon.max(axis=0) < rectangle.min(axis=0)) | (rectangle.max(axis=0) < polygon.min(axis=0))))


def geo_rows(store, ids: list[int]) -> dict[int, dict]:
    """Map columns of the given ids that are chips (plain images are left out)."""
    if not ids or not getattr(store.catalog, "has_geo", False):
        return {}
    rows = store.cursor().execute(
        f"SELECT image_id, {', '.join(HIT_COLUMNS)} FROM images "
        "WHERE image_id IN (SELECT unnest($ids)) AND lon_min IS NOT NULL", {"ids": [int(value) for value in ids]}
    ).fetchall()
    result = {}
    for row in rows:
        values = dict(zip(HIT_COLUMNS, row[1:]))
        values["acquired"] = values["acquired"].isoformat() if values["acquired"] is not None else None
        result[int(row[0])] = values
    return result
