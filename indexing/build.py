"""``engine index``: dataset → Parquet shards → FAISS index + index.json, resumable and appendable.

Order of work, chosen so that a ``kill -9`` at any point is harmless and mistakes surface before the slow part:
(1) validate flags, paths and the output folder, (2) take the folder's build lock (``indexing.lock``: a second
build into it stops here), (3) read the dataset, (4) load the model, (5) plan the segment and store the plan +
manifest, (6) encode pending shards, each written atomically (caption shard first, image shard last — the
image shard's existence marks completion; unreadable images are skipped and recorded in it), (7) write
``skipped.jsonl``, build faiss.index, (8) write index.json last. Rerunning the same command skips completed
shards.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from engine.devices import resolve_device
from engine.errors import ConfigError, DataError
from engine.data.geo_scenes import GeoOptions
from engine.data.masking import MaskOptions
from indexing.manifest import IndexConfig, Manifest, ShardInfo, tool_version
from indexing.layout import LOCK_FILE, OWN_ENTRIES, PLAN_DIR, SHARDS_DIR, SKIPPED_FILE, TEXT_SHARDS_DIR
from indexing.lock import BuildLock
from engine.atomic import sweep_temps
from indexing.shards import shard_files
from indexing.stages import StageTimes

DEFAULT_SHARD_SIZE = 10_000
SKIPPED_SHOWN = 5  # skipped images named in the summary; all of them are in skipped.jsonl


@dataclass(frozen=True)
class IndexOptions:
    data_dir: Path
    out: Path
    model_spec: str | None = None
    batch_size: int = 64
    workers: int | None = None
    shard_size: int | None = None
    device: str = "auto"
    factory: str | None = None
    memory_budget: str = "16GB"
    append: bool = False
    overwrite: bool = False
    mask: MaskOptions = field(default_factory=MaskOptions)
    with_text: bool = True
    test_time_views: int | None = None  # dihedral views averaged per image; None = what the model's config says
    remember: bool = True  # record the folder as this project's last index (indexing.last_index)
    ray: str | None = None  # encode on a Ray cluster: "auto" or its address (indexing.ray_index); None = this process
    ray_workers: int | None = None  # Ray encoder actors (default: one per GPU, else one per 4 CPUs)
    faiss_shards: int = 1  # split the faiss part into this many files for sharded serving
    image_runtime: str = "auto"  # eager | channels_last | torchscript | onnx | auto (encoders.image_runtime)
    text_runtime: str = "auto"  # eager | onnx | auto: the caption encoder (encoders.batch_text)
    images: Path | None = None  # where a precomp dataset's image files are (``--images``)
    geo: GeoOptions = field(default_factory=GeoOptions)  # how GeoTIFF scenes are cut into chips (docs/geo.md)


@dataclass
class IndexSummary:
    out: Path
    images_total: int = 0
    encoded: int = 0
    skipped: list[str] = field(default_factory=list)  # paths skipped by this run
    skipped_records: list[dict] = field(default_factory=list)  # every skipped image of the index (skipped.jsonl)
    duplicates: int = 0
    renumbered: bool = False
    shards_written: int = 0
    shards_reused: int = 0
    captions_encoded: int = 0
    factory: str = ""
    faiss_shards: int = 1
    calibration: str = ""  # how the approximate index's search setting was tuned (empty: exact index)
    seconds: float = 0.0
    up_to_date: bool = False
    nothing_new: bool = False  # --append found no image that is not indexed yet
    stages: StageTimes = field(default_factory=StageTimes)
    image_runtime: str = ""
    text_runtime: str = ""

    def lines(self) -> list[str]:
        rate = self.encoded / self.seconds if self.seconds > 0 else 0.0
        split = f" in {self.faiss_shards} faiss shards" if self.faiss_shards > 1 else ""
        result = [f"index {self.out}: {self.images_total} images, faiss {self.factory}{split}",
                  f"  encoded {self.encoded} images ({rate:.1f} images/s) and {self.captions_encoded} captions; "
                  f"shards written {self.shards_written}, reused {self.shards_reused}",
                  f"  skipped unreadable: {len(self.skipped_records)}"
                  + (f" (listed in {self.out / SKIPPED_FILE})" if self.skipped_records else "")
                  + f"; duplicate paths skipped: {self.duplicates}"]
        for record in self.skipped_records[:SKIPPED_SHOWN]:
            result.append(f"    {record['path']}: {record['reason']}")
        if len(self.skipped_records) > SKIPPED_SHOWN:
            result.append(f"    ... and {len(self.skipped_records) - SKIPPED_SHOWN} more")
        if self.calibration:
            result.append(f"  search tuned: {self.calibration}")
        if self.renumbered:
            result.append("  new images were given ids above the existing maximum (source_id keeps the original)")
        if self.image_runtime:
            text = f"; captions: {self.text_runtime}" if self.text_runtime else ""
            result.append(f"  encoder runtime: images {self.image_runtime}{text}")
        if self.stages.seconds:
            result.append(f"  time per stage: {self.stages.describe()}")
        if self.up_to_date:
            result.append("  nothing to do: all shards were complete (use --append to add new images)")
        if self.nothing_new:
            result.append(f"  nothing new to add: all {self.duplicates} images of the data are already indexed")
        return result


def _validate(options: IndexOptions) -> None:
    if options.batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {options.batch_size}")
    if options.shard_size is not None and options.shard_size <= 0:
        raise ConfigError(f"--shard-size must be positive, got {options.shard_size}")
    if options.workers is not None and options.workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {options.workers}")
    if options.append and options.overwrite:
        raise ConfigError("--append and --overwrite contradict each other; pick one")
    if options.out.exists() and not options.out.is_dir():
        raise ConfigError(f"--out {options.out}: exists and is not a folder")
    if not Path(options.data_dir).expanduser().exists():
        raise DataError(f"{options.data_dir}: no such file or folder")
    if options.mask.masks_dir and not Path(options.mask.masks_dir).is_dir():
        raise ConfigError(f"--masks {options.mask.masks_dir}: folder not found")
    if options.model_spec and _looks_like_path(options.model_spec) and not Path(options.model_spec).exists():
        raise ConfigError(f"--model {options.model_spec}: no such checkpoint folder")
    _check_out_location(options.out)
    if options.out.is_dir():
        foreign = sorted(entry.name for entry in options.out.iterdir() if entry.name not in OWN_ENTRIES)
        if foreign:
            raise ConfigError(f"--out {options.out}: folder holds files that are not part of an index "
                              f"({', '.join(foreign[:3])}); choose an empty or new folder")

    from encoders.batch_text import KINDS as TEXT_KINDS
    from encoders.image_runtime import KINDS

    if options.image_runtime not in (*KINDS, "auto"):
        raise ConfigError(f"--image-runtime must be one of auto, {', '.join(KINDS)}, got {options.image_runtime!r}")
    if options.text_runtime not in (*TEXT_KINDS, "auto"):
        raise ConfigError(f"--text-runtime must be one of auto, {', '.join(TEXT_KINDS)}, got {options.text_runtime!r}")
    options.geo.validate()
    if options.faiss_shards < 1:
        raise ConfigError(f"--faiss-shards must be 1 or more, got {options.faiss_shards}")
    if options.ray_workers is not None and options.ray is None:
        raise ConfigError("--ray-workers needs --ray")
    if options.ray is not None:
        from indexing.ray_index import probe_address, require_ray

        require_ray()
        probe_address(options.ray)  # an unreachable cluster fails here, before the model loads or a file is written


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or spec.startswith(".") or spec.startswith("~")


def _check_out_location(out: Path) -> None:
    """The nearest existing folder at or above ``out`` must be a writable folder (checked before any work)."""
    import os

    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable")


def _prepare_out(options: IndexOptions, fingerprint: str, views: int) -> Manifest | None:
    """Existing manifest to continue, or None for a fresh build; refuses foreign folders and other models."""
    out = options.out
    if not out.exists():
        return None
    manifest = Manifest.load(out)
    if manifest is not None and manifest.test_time_views not in (None, views) and not options.overwrite:
        raise ConfigError(f"--out {out}: built with --test-time-views {manifest.test_time_views}, this run would "
                          f"use {views}; repeat --test-time-views {manifest.test_time_views} or pass --overwrite")
    if manifest is not None and manifest.model_fingerprint != fingerprint and not options.overwrite:
        raise ConfigError(f"--out {out}: holds an index of model {manifest.model_fingerprint[:16]} "
                          f"({manifest.model_spec}), not of the requested model {fingerprint[:16]} "
                          f"({options.model_spec or 'default'}); pass --overwrite to replace it")
    if options.overwrite:
        for name in OWN_ENTRIES:
            if name == LOCK_FILE:
                continue  # ours: this build holds it
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return None
    if manifest is not None and manifest.mask != options.mask:
        raise ConfigError(f"--out {out}: built with masking {manifest.mask.describe()}, requested "
                          f"{options.mask.describe()}; use another --out or --overwrite")
    if manifest is not None and manifest.with_text != options.with_text:
        raise ConfigError(f"--out {out}: built {'with' if manifest.with_text else 'without'} caption embeddings; "
                          "repeat the original --no-text choice or use --overwrite")
    if manifest is not None and options.shard_size not in (None, manifest.shard_size):
        raise ConfigError(f"--shard-size {options.shard_size}: this index uses {manifest.shard_size}; "
                          "omit --shard-size to continue it")
    return manifest


def _check_faiss_shards(shards: int, manifest: Manifest, unsaved: int) -> None:
    planned = sum(segment.planned_images for segment in manifest.segments) + unsaved
    if shards > planned:
        raise ConfigError(f"--faiss-shards {shards}: more faiss shards than the {planned} images planned for this "
                          f"index; use at most {planned}")


def run_index(options: IndexOptions) -> IndexSummary:
    """Build or continue the index described by ``options``; returns the end-of-run summary."""
    _validate(options)
    with BuildLock(options.out):
        return _run_index_locked(options)


def _load_readable_dataset(data_dir: Path, images: Path | None = None):
    """The dataset, keeping listed images that are missing or empty (they are skipped and listed later); but
    when not one listed image exists, the data folder is wrong: say so now, not after the model loads."""
    from engine.data import load_dataset

    dataset = load_dataset(data_dir, skip_unreadable=True, images=images)
    if dataset.images and not any(_usable_file(record.path) for record in dataset.images):
        raise DataError(f"{data_dir}: none of the {len(dataset.images)} listed images exists as a non-empty file "
                        f"(first: {dataset.images[0].path}); check the dataset folder")
    return dataset


def _usable_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _with_scene_chips(dataset, geo: GeoOptions, model, mask: MaskOptions):
    """GeoTIFF scenes cut into chips (``engine.data.geo_dataset``); the chip size defaults to the model's input."""
    from engine.data.geo_dataset import expand_scenes
    from engine.data.geo_scenes import DEFAULT_CHIP_SIZE

    vision = getattr(model.config, "vision", None)
    chip_size = geo.chip_size or int(getattr(vision, "image_size", DEFAULT_CHIP_SIZE))
    expanded, report = expand_scenes(dataset, geo, chip_size)
    if report.scenes and mask.masks_dir:
        raise ConfigError(f"--masks {mask.masks_dir}: mask files are per image file, and {dataset.root} has GeoTIFF "
                          "scenes cut into chips; use --mask hard|soft without --masks (estimated per chip)")
    for note in report.notes():
        print(f"note: {note}", file=sys.stderr)
    return expanded


def _run_index_locked(options: IndexOptions) -> IndexSummary:
    from indexing.last_index import record_last_index
    from indexing import encode, plan as planning
    from indexing.choose import parse_memory, validate_factory
    from indexing.encode_loop import encode_segment
    from indexing.faiss_build import build_faiss, check_unique_ids
    from engine.data.masking import check_masks_present
    import pyarrow.parquet as pq

    from indexing.row_store import write_row_file
    from indexing.skipped import write_skipped_list

    started = time.perf_counter()
    budget = parse_memory(options.memory_budget)
    device = resolve_device(options.device)
    dataset = _load_readable_dataset(options.data_dir, options.images)
    for note in dataset.notes:
        print(f"note: {note}", file=sys.stderr)
    times = StageTimes()
    with times.timed("model load"):
        model = encode.load_encoder(options.model_spec, device)
    if options.test_time_views is not None:
        model.set_test_time_views(options.test_time_views)
    dataset = _with_scene_chips(dataset, options.geo, model, options.mask)
    views = model.config.vision.test_time_views
    fingerprint, dim = model.fingerprint(), int(model.config.embed_dim)
    if options.factory:  # before anything is written: nothing half-built for a factory that cannot train
        validate_factory(options.factory, dim, None if options.append else len(dataset.images))
    manifest = _prepare_out(options, fingerprint, views)
    out = options.out
    for folder in (out, out / SHARDS_DIR, out / TEXT_SHARDS_DIR, out / PLAN_DIR):
        sweep_temps(folder)
    summary = IndexSummary(out=out, stages=times)
    if manifest is None:
        manifest = Manifest(model_fingerprint=fingerprint, model_spec=options.model_spec or "default",
                            embed_dim=dim, shard_size=options.shard_size or DEFAULT_SHARD_SIZE,
                            with_text=options.with_text, mask=options.mask, tool_version=tool_version(),
                            test_time_views=views)
    data_root = str(dataset.root.resolve())
    last = manifest.segments[-1] if manifest.segments else None
    if last is not None and planning.pending_shards(last, out):
        if last.data_root != data_root:
            raise ConfigError(f"--out {out}: an interrupted build of {last.data_root} must finish first; "
                              f"rerun the same command with DATA_DIR {last.data_root}")
        segment_plan = planning.load_segment_plan(last, out)
    elif last is not None and not options.append:
        if data_root not in {segment.data_root for segment in manifest.segments}:
            raise ConfigError(f"--out {out}: already indexes {manifest.segments[0].data_root}; pass --append to "
                              f"add {data_root} or --overwrite to rebuild")
        segment_plan = None
        summary.up_to_date = True
    else:
        _check_faiss_shards(options.faiss_shards, manifest, len(dataset.images))  # before the plan is written
        segment_plan = planning.new_segment_plan(dataset, out, manifest, manifest.shard_size)
        if not segment_plan.images and last is None:
            raise DataError(f"{options.data_dir}: no images to index")
        summary.duplicates, summary.renumbered = segment_plan.duplicates, segment_plan.renumbered
        summary.nothing_new = last is not None and not segment_plan.images
        if segment_plan.images:
            manifest.segments.append(segment_plan.segment)
            out.mkdir(parents=True, exist_ok=True)
            manifest.save(out)
    _check_faiss_shards(options.faiss_shards, manifest, 0)
    if segment_plan is not None and segment_plan.images:
        pending = planning.pending_shards(segment_plan.segment, out)
        summary.shards_reused = segment_plan.segment.shard_count - len(pending)
        if options.mask.masks_dir:
            todo = [image.path for local in pending for image in segment_plan.shard_images(local, manifest.shard_size)]
            check_masks_present(Path(options.mask.masks_dir), todo)
        images = sum(len(segment_plan.shard_images(local, manifest.shard_size)) for local in pending)
        runtime = encode.runtime_for(options.image_runtime, images, device)
        text_runtime = encode.runtime_for(options.text_runtime, images, device, "onnx") if manifest.with_text \
            else "eager"
        if options.ray is not None:
            from indexing.ray_index import encode_segment_ray

            encode_segment_ray(model, dataset, segment_plan, pending, manifest, out, options, summary, runtime,
                               text_runtime)
        else:
            with times.timed("runtime build"):
                encoder = encode.image_encoder(model, runtime)
                text_encoder = encode.text_encoder_for(model, text_runtime)
            summary.image_runtime = encoder.describe()
            summary.text_runtime = text_encoder.describe() if manifest.with_text else ""
            workers = encode.default_workers(device) if options.workers is None else options.workers
            encode_segment(model, dataset, segment_plan, pending, manifest, out, device, options.batch_size,
                           workers, summary, encoder, text_encoder)
    with times.timed("ids check"):
        check_unique_ids(out)
    summary.skipped_records = write_skipped_list(out)
    if not any(pq.ParquetFile(file).metadata.num_rows for file in shard_files(out)):
        raise DataError(f"{options.data_dir}: no image could be read ({len(summary.skipped_records)} unreadable; "
                        f"reasons in {out / SKIPPED_FILE})")
    with times.timed("faiss"):
        built = build_faiss(out, dim, budget, options.factory, options.device, options.faiss_shards)
    with times.timed("row file"):
        write_row_file(out)
    summary.factory, summary.images_total = built.spec.factory, built.count
    summary.faiss_shards = max(1, len(built.shard_files))
    summary.calibration = built.calibration.describe() if built.calibration is not None else ""
    _write_index_json(out, manifest, built, summary, time.perf_counter() - started)
    summary.seconds = time.perf_counter() - started
    if options.remember:
        record_last_index(out)  # the default index of `engine query` in this project
    return summary


def _write_index_json(out: Path, manifest: Manifest, built, summary: IndexSummary, seconds: float) -> None:
    import pyarrow.parquet as pq

    from indexing.shards import read_columns

    shards, captions = [], 0
    for file in shard_files(out):
        ids = read_columns(file, ["image_id"]).column("image_id").to_numpy()
        text_file = out / TEXT_SHARDS_DIR / file.name
        text_rows = pq.ParquetFile(text_file).metadata.num_rows if text_file.exists() else 0
        captions += text_rows
        shards.append(ShardInfo(file=f"{SHARDS_DIR}/{file.name}",
                                text_file=f"{TEXT_SHARDS_DIR}/{file.name}" if text_file.exists() else None,
                                rows=len(ids), text_rows=text_rows,
                                first_id=int(ids.min()) if len(ids) else None,
                                last_id=int(ids.max()) if len(ids) else None))
    planned = sum(segment.planned_images for segment in manifest.segments)
    config = IndexConfig(
        model_fingerprint=manifest.model_fingerprint, model_spec=manifest.model_spec, embed_dim=manifest.embed_dim,
        metric=built.spec.metric, factory=built.spec.factory, index_params=dict(built.spec.params),
        image_count=built.count, caption_count=captions, skipped_images=planned - built.count, shards=shards,
        mask=manifest.mask, data_roots=[segment.data_root for segment in manifest.segments],
        build_seconds=round(seconds, 3), built_on=built.device, tool_version=tool_version(),
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        calibration=asdict(built.calibration) if built.calibration is not None else None,
        test_time_views=manifest.test_time_views, faiss_shards=list(built.shard_files))
    config.save(out)


def print_summary(summary: IndexSummary) -> None:
    for line in summary.lines():
        print(line, file=sys.stderr)
