"""``engine data ...`` sub-commands. Only argument handling and printing live here; the work is in ``check``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from engine.data.check import CheckReport, check_dataset
from engine.data.detect import default_dataset_path

MAX_PROBLEM_LINES = 20
EXIT_UNUSABLE = 1

data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True, add_completion=False)


def _counts(counts: dict[str, int]) -> str:
    return " / ".join(f"{name} {count:,}" for name, count in counts.items()) or "-"


def _per_image(per_image: dict[int, int]) -> str:
    return ", ".join(f"{count:,} images with {n}" for n, count in sorted(per_image.items()))


def _expected(report: CheckReport) -> dict[str, str]:
    manifest = report.manifest
    if manifest is None:
        return {}
    splits = manifest.split_counts
    return {
        "images": f"{manifest.image_count:,}",
        "captions": f"{manifest.caption_count:,}" if manifest.caption_count else "-",
        "splits": _counts(splits) if splits else "none",
        "classes": str(manifest.class_count),
        "size": f"{manifest.image_size[0]}x{manifest.image_size[1]}",
        "captions/image": str(manifest.captions_per_image or "-"),
    }


def _source_files(report: CheckReport) -> str:
    """The annotation file, or the precomp text files, the dataset was read from."""
    dataset = report.dataset
    if dataset.annotation_file:
        return dataset.annotation_file.name
    if dataset.format == "precomp":
        from engine.data.precomp import precomp_files

        return ", ".join(f"{c.name} + {n.name}" for c, n in precomp_files(dataset.root).values())
    return ""


def _print_table(report: CheckReport) -> None:
    from rich.table import Table

    from engine.console import table_console

    dataset, expected = report.dataset, _expected(report)
    per_image = report.captions_per_image()
    detected = report.manifest.title if report.manifest else "unknown (generic checks only)"
    table = Table(title=f"engine data check: {report.path}", title_justify="left")
    table.add_column("item")
    table.add_column("found", overflow="fold")
    table.add_column("expected", overflow="fold")
    rows = [
        ("dataset", detected, ", ".join(report.match.evidence) if report.match else ""),
        ("format", dataset.format, _source_files(report)),
        ("images", f"{len(dataset.images):,}", expected.get("images", "")),
        ("captions", f"{len(dataset.captions):,}", expected.get("captions", "")),
        ("splits (images)", _counts(dataset.split_counts()).replace("none", "no split"), expected.get("splits", "")),
        ("splits (captions)", _counts(dataset.caption_split_counts()) if dataset.captions else "-", ""),
        ("captions/image", _per_image(per_image) if dataset.captions else "-",
         expected.get("captions/image", "")),
        ("classes", f"{len(dataset.classes)} ({len(dataset.unlabelled):,} images unlabelled)",
         expected.get("classes", "")),
        ("image sizes", ", ".join(f"{w}x{h}: {n:,}" for (w, h), n in report.sizes.most_common(3)) or "-",
         expected.get("size", "")),
        ("image modes", ", ".join(f"{m}: {n:,}" for m, n in report.modes.most_common()) or "-", ""),
        ("problems", f"{len(report.errors)} errors, {len(report.warnings)} warnings", ""),
        ("checked in", f"{report.seconds:.2f} s ({'full decode' if report.decoded else 'headers only'})", ""),
    ]
    for row in rows:
        table.add_row(*row)
    table_console().print(table)


def _print_problems(report: CheckReport) -> None:
    findings = report.errors + report.warnings
    for problem in findings[:MAX_PROBLEM_LINES]:
        print(f"{problem.severity}: {problem.line()}", file=sys.stderr)
    if len(findings) > MAX_PROBLEM_LINES:
        print(f"... and {len(findings) - MAX_PROBLEM_LINES} more", file=sys.stderr)
    for note in (p for p in report.problems if p.severity == "info"):
        print(f"note: {note.line()}")
    verdict = "usable" if report.usable else f"NOT usable: {len(report.errors)} errors"
    print(f"{report.path}: {verdict}")


@data_app.command("check")
def check_command(
    directory: Optional[Path] = typer.Argument(None, help="Dataset folder or annotation JSON (default: see README)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable JSON report instead."),
    quick: bool = typer.Option(False, "--quick", help="Read image headers only (misses truncated files)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Decoding threads (0 = CPU count + 1, at most 8)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of a precomp dataset (default: "
                                          "RSICD_images/, images/ or the folder itself)."),
) -> None:
    """Detect which dataset a folder holds, validate it against its manifest and summarise it.

    Exit 0 when the dataset is usable (warnings allowed), 1 when it has errors, 2 when it cannot be read.
    """
    path = directory if directory is not None else default_dataset_path()
    report = check_dataset(path, full_decode=not quick, workers=workers or None, images=images)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        _print_table(report)
        _print_problems(report)
    if not report.usable:
        raise typer.Exit(EXIT_UNUSABLE)
