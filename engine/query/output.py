"""Printing results: a rich table for people, JSON for machines (notes go to stderr with the table)."""

from __future__ import annotations

import json
import sys

from engine.query.request import QueryResult

CAPTION_WIDTH = 60


def visible(text: str | None) -> str:
    """``text`` with every non-printable character shown as its escape (``\x1b``, ``\n``, ``\u202e``): file
    names and captions are data, and a raw escape sequence or newline must not reach a terminal or split a row."""
    if text is None:
        return ""
    if text.isprintable():
        return text
    return "".join(character if character.isprintable() else character.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for character in text)


def first_caption(captions: list[str]) -> str:
    return captions[0] if captions else ""


def print_table(result: QueryResult) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from engine.console import table_console

    errors = Console(stderr=True)
    for note in result.notes:
        errors.print(visible(note) if note.startswith("warning:") else f"note: {visible(note)}", markup=False,
                     highlight=False)
    if not result.hits:
        errors.print("no results", markup=False)
        return
    captions = result.target == "captions"
    title = f"{result.query!r} → {result.target}" + (f" where {visible(result.where)}" if result.where else "")
    if result.rerank != "none":
        title += f" (rerank {result.rerank})"
    table = Table(title=Text(title), title_justify="left")
    located = any(getattr(hit, "geo", None) is not None for hit in result.hits)  # chips of GeoTIFF scenes
    columns = [("rank", "right"), ("score", "right"), ("id", "right"), ("path", "left"), ("class", "left"),
               ("caption", "left")]
    if located:
        columns.insert(4, ("lat, lon", "left"))
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold" if name == "path" else "ellipsis",
                         max_width=CAPTION_WIDTH if name == "caption" else None)
    for hit in result.hits:
        text = hit.text if captions and hit.text is not None else first_caption(hit.captions)
        # Text, not str: a file name like "[red]x" or "[/]" is shown as it is, never read as rich markup
        cells = [str(hit.rank), f"{hit.score:.4f}", str(hit.image_id), Text(visible(hit.path)),
                 Text(visible(hit.label)), Text(visible(text))]
        if located:
            cells.insert(4, f"{hit.geo['lat']:.5f}, {hit.geo['lon']:.5f}" if hit.geo else "")
        table.add_row(*cells)
    table_console().print(table)


def print_json(result: QueryResult) -> None:
    sys.stdout.write(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
