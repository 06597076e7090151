"""The gallery's map part for chips of GeoTIFF scenes: each card's coordinates, and per scene an offline overview
(a quicklook of the scene, decimated read, with the hits' footprints drawn on it as SVG rectangles numbered by
rank). Nothing is fetched from the internet: no map tiles, scripts or fonts.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

from engine.query.output import visible

OVERVIEW_SIDE = 480
JPEG_QUALITY = 80
THUMB_SIDE = 224


def _escape(text: str) -> str:
    """Control characters shown as escapes (``engine.query.output.visible``), then HTML-escaped."""
    return html.escape(visible(text))


def coordinates_line(hit) -> str:
    geo = hit.geo
    date = f" · {_escape(geo['acquired'])}" if geo.get("acquired") else ""
    return (f"<div class='where'>{geo['lat']:.5f}°, {geo['lon']:.5f}° (lat, lon){date} · "
            f"{geo['gsd']:.2f} m/px · window {geo['col_off']},{geo['row_off']} "
            f"{geo['win_width']}×{geo['win_height']} of {_escape(Path(geo['scene']).name)}</div>")


def chip_jpeg(hit) -> bytes | None:
    """The chip exactly as it was indexed (its window, bands and scaling), as a small JPEG."""
    from engine.data.geo_read import read_chip
    from engine.data.geo_scenes import ChipSpec
    from engine.errors import DataError

    try:
        image = read_chip(Path(hit.path), ChipSpec.from_json(hit.geo["chip_spec"]))
    except (DataError, OSError, ValueError, KeyError):
        return None
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _overview(path: str, hits: list) -> str:
    import base64

    from PIL import Image

    from engine.data.geo_read import scene_quicklook
    from engine.data.geo_scenes import ChipSpec
    from engine.errors import DataError

    spec = ChipSpec.from_json(hits[0].geo["chip_spec"])
    name = _escape(Path(path).name)
    try:
        picture, factor = scene_quicklook(Path(path), spec.bands, spec.scale, OVERVIEW_SIDE)
    except (DataError, OSError, ValueError):
        return f"<div class='note'>overview of {name}: scene not readable</div>"
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    height, width = picture.shape[:2]
    boxes = []
    for hit in hits:
        geo = hit.geo
        x, y = geo["col_off"] / factor, geo["row_off"] / factor
        w, h = geo["win_width"] / factor, geo["win_height"] / factor
        boxes.append(f"<g><title>#{hit.rank} · {hit.score:.4f}</title><rect x='{x:.1f}' y='{y:.1f}' "
                     f"width='{w:.1f}' height='{h:.1f}' fill='none' stroke='#ffd400' stroke-width='2'/>"
                     f"<text x='{x + 3:.1f}' y='{y + 14:.1f}' fill='#ffd400' font-size='13' "
                     f"font-weight='700'>{hit.rank}</text></g>")
    bounds = [min(hit.geo["lon_min"] for hit in hits), min(hit.geo["lat_min"] for hit in hits),
              max(hit.geo["lon_max"] for hit in hits), max(hit.geo["lat_max"] for hit in hits)]
    return (f"<figure class='overview'><svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}'><image href='{uri}' width='{width}' height='{height}'/>"
            + "".join(boxes) + f"</svg><figcaption>{name}: {len(hits)} hit(s), footprints in WGS84 "
            f"{html.escape(json.dumps([round(value, 5) for value in bounds]))} (W, S, E, N)</figcaption></figure>")


def scene_overviews(hits: list) -> str:
    """One overview per scene among the hits, in order of each scene's best rank."""
    by_scene: dict[str, list] = {}
    for hit in hits:
        if hit.geo is not None:
            by_scene.setdefault(hit.path, []).append(hit)
    return ("<div class='overviews'><style>.overview{display:inline-block;margin:0 12px 12px 0;background:#fff;"
            "border:1px solid #dde1e6;padding:6px}.overview figcaption{font-size:12px;color:#58636f}"
            ".where{color:#2b7a3d;font-size:12px}</style>"
            + "".join(_overview(path, scene_hits) for path, scene_hits in by_scene.items()) + "</div>")
