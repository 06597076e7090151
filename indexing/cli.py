"""``engine index ...``: build (default sub-command) and ``stats``. Argument handling only; work is elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperGroup

from engine.data.image_guard import MAX_PIXELS_HELP
from indexing.choose import DEFAULT_MEMORY_BUDGET

DEFAULT_SIGMA = 0.2


class BuildByDefault(TyperGroup):
    """``engine index DATA_DIR ...`` means ``engine index build DATA_DIR ...``; ``stats`` stays a sub-command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["build", *args]
        return super().parse_args(ctx, _ray_value_optional(args))


def _ray_value_optional(args: list[str]) -> list[str]:
    """``--ray`` alone (last, or followed by another option) means ``--ray auto``."""
    result = []
    for position, arg in enumerate(args):
        result.append(arg)
        if arg == "--ray" and (position + 1 == len(args) or args[position + 1].startswith("-")):
            result.append("auto")
    return result


index_app = typer.Typer(cls=BuildByDefault, help="Build a searchable index (Parquet shards + FAISS + DuckDB).",
                        no_args_is_help=True, add_completion=False)


@index_app.command("build")
def build_command(
    data_dir: Path = typer.Argument(..., help="Dataset folder (any format `engine data check` reads) or image folder."),
    out: Path = typer.Option(..., "--out", help="Index folder to create or continue."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint folder or named config (default model)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode processes beside the encoder (default: cores - 1; 0 on a CPU build on <= 2 cores)."),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Images per Parquet shard (default 10000)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    index: Optional[str] = typer.Option(None, "--index", help="FAISS factory string (default: chosen by size)."),
    memory_budget: str = typer.Option(DEFAULT_MEMORY_BUDGET, "--memory-budget", help="Index RAM budget, e.g. 4GB."),
    append: bool = typer.Option(False, "--append", help="Add images not yet in the index."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index (e.g. of another model)."),
    mask: str = typer.Option("none", "--mask", help="Background masking: none | hard | soft."),
    sigma: float = typer.Option(DEFAULT_SIGMA, "--sigma", help="Soft-mask background factor, 0 < sigma < 1."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of foreground PNG masks (same stem)."),
    no_text: bool = typer.Option(False, "--no-text", help="Do not embed captions."),
    test_time_views: Optional[int] = typer.Option(
        None, "--test-time-views", help="Dihedral views averaged per image embedding, 1-8 (default: the model's own; "
        "the shipped model uses 4). Image encoding time grows with N; see docs/MODEL_CARD.md for what each N buys."),
    ray: Optional[str] = typer.Option(
        None, "--ray", help="Encode on a Ray cluster: `--ray` / `--ray auto` (the running local cluster, else a new "
        "one) or `--ray HOST:PORT`. Needs the extra: pip install -e \".[ray]\". See docs/indexing.md."),
    image_runtime: str = typer.Option(
        "auto", "--image-runtime", help="Image encoder runtime: auto | eager | channels_last | torchscript | onnx. "
        "A compiled one is kept only if it matches eager float32 to cosine >= 0.9999 on probe images, else eager; "
        "auto = the fastest faithful one on CPU from 512 images up, eager otherwise (docs/benchmarks.md)."),
    text_runtime: str = typer.Option(
        "auto", "--text-runtime", help="Caption encoder runtime: auto | eager | onnx (checked like --image-runtime)."),
    faiss_shards: int = typer.Option(
        1, "--faiss-shards", help="Split the faiss index into N files for sharded serving (engine serve "
        "--shard-backend local|ray); rerun with another N to re-split without re-encoding."),
    ray_workers: Optional[int] = typer.Option(
        None, "--ray-workers", help="Ray encoder actors, one model each (default: one per GPU, else one per 4 CPUs)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder of a precomp DATA_DIR (default: "
                                          "RSICD_images/, images/ or the folder itself)."),
    max_image_pixels: Optional[int] = typer.Option(None, "--max-image-pixels", help=MAX_PIXELS_HELP),
    chip_size: Optional[int] = typer.Option(None, "--chip-size", help="GeoTIFF scenes: chip side in pixels "
                                            "(default: the model's input size). See docs/geo.md."),
    chip_overlap: int = typer.Option(0, "--chip-overlap", help="GeoTIFF scenes: pixels shared by neighbouring chips."),
    gsd: Optional[float] = typer.Option(None, "--gsd", help="GeoTIFF scenes: resample chips to this many metres "
                                        "per pixel (default: the scene's own)."),
    bands: Optional[str] = typer.Option(None, "--bands", help="GeoTIFF scenes: bands as R,G,B, counted from 1 "
                                        "(default: red/green/blue from the colour interpretation, else 1,2,3)."),
) -> None:
    """Encode DATA_DIR into INDEX_DIR: Parquet shards, faiss.index, index.json (resumable: rerun to continue)."""
    from engine.data.geo_scenes import GeoOptions, parse_bands
    from engine.data.image_guard import configure
    from engine.data.masking import mask_options
    from indexing.build import IndexOptions, print_summary, run_index

    configure(max_image_pixels)

    options = IndexOptions(data_dir=data_dir, out=out, model_spec=model, batch_size=batch_size, workers=workers,
                           shard_size=shard_size, device=device, factory=index, memory_budget=memory_budget,
                           append=append, overwrite=overwrite, mask=mask_options(mask, sigma, masks),
                           with_text=not no_text, test_time_views=test_time_views, ray=ray,
                           ray_workers=ray_workers, faiss_shards=faiss_shards, image_runtime=image_runtime,
                           text_runtime=text_runtime, images=images,
                           geo=GeoOptions(chip_size=chip_size, chip_overlap=chip_overlap, gsd=gsd,
                                          bands=parse_bands(bands)))
    print_summary(run_index(options))


@index_app.command("masks")
def masks_command(
    data_dir: Path = typer.Argument(..., help="Dataset folder or image folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the PNG masks (one per image, same stem) + masks.json."),
    source: str = typer.Option("vir-belief", "--source",
                               help="vir-belief | vir-attention (where a trained model's VIR looks) | colour "
                                    "(the built-in colour-contrast estimate)."),
    model: Optional[str] = typer.Option(None, "--model", help="Checkpoint folder for a vir-* source "
                                        "(default: the shipped model)."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (train, val, test)."),
    batch_size: int = typer.Option(32, "--batch-size"),
) -> None:
    """Write foreground masks for `engine index --masks` and `engine train --train-masks`; reports the share kept."""
    from indexing.foreground_masks import write_masks

    report = write_masks(data_dir, out, source, model, split, batch_size)
    print(f"{report.images} masks in {report.folder} ({source}): {report.mean_foreground * 100:.1f}% of pixels kept "
          "as foreground on average")
    for name, fraction in report.per_class.items():
        print(f"  {name:<20} {fraction * 100:5.1f}%")


@index_app.command("stats")
def stats_command(
    index_dir: Path = typer.Argument(..., help="Index folder built by `engine index`."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Counts of indexed images per split and per class, and of caption embeddings."""
    from indexing.catalog import Catalog

    catalog = Catalog(index_dir)
    try:
        stats = catalog.stats()
    finally:
        catalog.close()
    if as_json:
        print(stats.to_json())
        return
    print(f"{index_dir}: {stats.images} images, {stats.captions} captions")
    for title, counts in (("split", stats.per_split), ("class", stats.per_class)):
        width = max(len(name) for name in counts) if counts else 0
        print(f"per {title}:")
        for name, count in counts.items():
            print(f"  {name:<{width}}  {count}")
    sys.stdout.flush()
