"""A self-contained HTML gallery of a result: thumbnails embedded as base64 JPEG, scores, captions, the query.

Everything is inline (no external CSS, scripts or image links), so the page can be mailed or opened from any
folder. All text is HTML-escaped, with control characters shown as escapes (``\x1b``, ``\n``): captions, queries and
file names are user data.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from engine.query.output import visible
from engine.query.request import QueryResult

THUMB_SIDE = 224
JPEG_QUALITY = 80

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#f6f7f9;color:#1d232b}
h1{font-size:20px;margin:0 0 4px}.meta{color:#58636f;font-size:13px;margin-bottom:12px}
.note{background:#fff6d6;border:1px solid #e9d68a;padding:6px 10px;margin:6px 0;font-size:13px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:14px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:8px;font-size:13px}
.card img{width:100%;aspect-ratio:1;object-fit:cover;border-radius:4px;background:#ccd}
.missing{width:100%;aspect-ratio:1;display:flex;align-items:center;justify-content:center;background:#e4e6ea}
.score{font-weight:600}.label{color:#2e6bd0}.path{color:#7a8490;word-break:break-all;font-size:11px}
.query img{max-width:180px;border-radius:4px}form{margin:10px 0}input[type=text]{width:360px}
"""


def thumbnail_data_uri(path: str | Path | None = None, jpeg: bytes | None = None) -> str | None:
    """A ``data:image/jpeg;base64,...`` URI of a small copy of the image, or None when it cannot be read."""
    if jpeg is None:
        from engine.data.images import load_rgb
        from engine.errors import DataError

        try:
            image = load_rgb(path)
        except DataError:
            return None
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        jpeg = buffer.getvalue()
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def render_gallery(result: QueryResult, form_html: str = "") -> str:
    """The whole page as a string; ``form_html`` lets the server put a search form above the results."""
    def escape(text: str | None) -> str:  # control characters shown as escapes, then HTML-escaped
        return html.escape(visible(text))

    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{escape(result.query)} — rs-engine results</title><style>{_STYLE}</style></head><body>",
             form_html, f"<h1>Query: {escape(result.query)}</h1>"]
    meta = [f"target {escape(result.target)}", f"k {result.k}", f"rerank {escape(result.rerank)}",
            f"{len(result.hits)} results"]
    if result.where:
        meta.append(f"where {escape(result.where)}")
    if "total" in result.timings_ms:
        meta.append(f"{result.timings_ms['total']:.1f} ms")
    parts.append(f"<div class='meta'>{' · '.join(meta)}</div>")
    if result.query_image_jpeg:
        parts.append(f"<div class='query'><img alt='query image' src='"
                     f"{thumbnail_data_uri(jpeg=result.query_image_jpeg)}'></div>")
    parts.extend(f"<div class='note'>{escape(note)}</div>" for note in result.notes)
    if any(hit.geo is not None for hit in result.hits):
        from engine.query.geo_gallery import scene_overviews

        parts.append(scene_overviews(result.hits))
    parts.append("<div class='grid'>")
    for hit in result.hits:
        uri = thumbnail_data_uri(hit.path) if hit.geo is None else _chip_uri(hit)
        picture = (f"<img alt='image {hit.image_id}' src='{uri}'>" if uri
                   else "<div class='missing'>image not readable</div>")
        caption = hit.text if hit.text is not None else (hit.captions[0] if hit.captions else "")
        more = "".join(f"<li>{escape(text)}</li>" for text in hit.captions[1:]) if hit.text is None else ""
        parts.append(
            f"<div class='card'>{picture}<div><span class='score'>#{hit.rank} · {hit.score:.4f}</span> · id "
            f"{hit.image_id} · <span class='label'>{escape(hit.label or '')}</span></div>"
            f"<div>{escape(caption)}</div>" + (f"<details><summary>more captions</summary><ul>{more}</ul>"
                                              "</details>" if more else "")
            + _where_line(hit) + f"<div class='path'>{escape(hit.path)}</div></div>")
    parts.append("</div></body></html>")
    return "".join(parts)


def _chip_uri(hit) -> str | None:
    from engine.query.geo_gallery import chip_jpeg

    jpeg = chip_jpeg(hit)
    return thumbnail_data_uri(jpeg=jpeg) if jpeg else None


def _where_line(hit) -> str:
    if hit.geo is None:
        return ""
    from engine.query.geo_gallery import coordinates_line

    return coordinates_line(hit)


def write_gallery(result: QueryResult, out: Path) -> None:
    """Write the page atomically (temp name in the same folder, then rename)."""
    from engine.atomic import AtomicWriteError, write_text_atomic
    from engine.errors import EngineError

    out = Path(out)
    try:
        write_text_atomic(out, render_gallery(result))
    except AtomicWriteError as error:
        raise EngineError(f"--html {out}: cannot write ({error.os_error.strerror or error.os_error})") from None
