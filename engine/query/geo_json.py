"""Answers a GIS opens: the location block of a JSON hit and a GeoJSON FeatureCollection of the hits.

Coordinates are WGS84 longitude/latitude (RFC 7946), each footprint a Polygon with its edges densified as the
index stored them; rings are closed and run counter-clockwise (RFC 7946's right-hand rule). Properties: rank,
score, image_id, scene, window, acquired date, caption, crs, gsd.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def parse_wkt_polygon(text: str) -> list[list[float]]:
    """The outer ring of a ``POLYGON ((x y, ...))`` as the index writes it (indexing.geo_rows)."""
    inner = text.strip().removeprefix("POLYGON").strip().strip("()")
    return [[float(value) for value in pair.split()] for pair in inner.split(",")]


def _counter_clockwise(ring: list[list[float]]) -> list[list[float]]:
    area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring, ring[1:]))
    return ring if area > 0 else ring[::-1]


def footprint_geometry(geo: dict) -> dict:
    return {"type": "Polygon", "coordinates": [_counter_clockwise(parse_wkt_polygon(geo["footprint_wgs84"]))]}


def hit_location(geo: dict) -> dict:
    """What ``--json`` adds to a hit that is a chip of a scene."""
    return {"scene": geo["scene"], "window": [geo["col_off"], geo["row_off"], geo["win_width"], geo["win_height"]],
            "crs": geo["crs"], "lon": geo["lon"], "lat": geo["lat"],
            "bbox": [geo["lon_min"], geo["lat_min"], geo["lon_max"], geo["lat_max"]], "gsd": geo["gsd"],
            "acquired": geo["acquired"], "footprint": footprint_geometry(geo)}


def feature_collection(result: Any) -> dict:
    features = []
    for hit in result.hits:
        if hit.geo is None:
            continue
        geo = hit.geo
        caption = hit.text if hit.text is not None else (hit.captions[0] if hit.captions else "")
        features.append({"type": "Feature", "id": hit.rank, "geometry": footprint_geometry(geo), "properties": {
            "rank": hit.rank, "score": round(hit.score, 6), "image_id": hit.image_id, "scene": geo["scene"],
            "path": hit.path, "col_off": geo["col_off"], "row_off": geo["row_off"], "width": geo["win_width"],
            "height": geo["win_height"], "acquired": geo["acquired"], "caption": caption, "crs": geo["crs"],
            "gsd": geo["gsd"]}})
    return {"type": "FeatureCollection", "name": "engine query: " + result.query, "features": features}


def write_geojson(result: Any, out: Path) -> int:
    """Write the hits' footprints to ``out`` atomically; returns how many features (hits that are chips)."""
    from engine.atomic import AtomicWriteError, write_text_atomic
    from engine.errors import EngineError

    collection = feature_collection(result)
    try:
        write_text_atomic(Path(out), json.dumps(collection, ensure_ascii=False) + "\n")
    except AtomicWriteError as error:
        raise EngineError(f"--geojson {out}: cannot write ({error.os_error.strerror or error.os_error})") from None
    return len(collection["features"])
