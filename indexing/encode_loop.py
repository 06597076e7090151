"""Encode the pending shards of one segment and write them, with a progress bar (images/s, ETA).

One DataLoader streams every pending image in plan order; results are gathered per shard (``ShardAssembler``)
and the shard is written as soon as its last planned image has come back, so memory is bounded by one shard
plus the loader's prefetch, never by the dataset. The Ray path (``indexing.ray_index``) uses the same decode
function, image-encode stage, assembler and shard writer; only the transport differs. Images that cannot be read
are skipped: their id, path and reason go into the image shard's metadata (``engine.skipped``), so the record
is written atomically with the shard and a resumed build still knows them; ``indexing.skipped`` lists them all
in ``skipped.jsonl``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from engine.data.model import Dataset
from indexing.manifest import Manifest
from indexing.encode import ImageItems, PlannedImage, encode_decoded, encode_texts, image_loader
from indexing.layout import SHARDS_DIR, TEXT_SHARDS_DIR, shard_name
from indexing.plan import SegmentPlan
from engine.atomic import write_table_atomic
from indexing.shards import ImageRows, TextRows, image_table, text_table
from indexing.skipped import SKIPPED_META
from indexing.stages import StageTimes


class RateColumn(ProgressColumn):
    """Images per second, from rich's own moving speed estimate."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:.1f} img/s" if task.speed else "-- img/s")


def _progress() -> Progress:
    return Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)


def _shard_metadata(manifest: Manifest, data_root: str, shard_index: int) -> dict[str, str]:
    return {"model_fingerprint": manifest.model_fingerprint, "model_spec": manifest.model_spec,
            "embed_dim": str(manifest.embed_dim), "data_root": data_root, "shard_index": str(shard_index),
            **manifest.mask.describe()}


def captions_by_image(dataset: Dataset) -> dict[int, list[tuple[int, str]]]:
    """Dataset image id → [(caption id, text)] in dataset order."""
    captions_of: dict[int, list[tuple[int, str]]] = {}
    for caption in dataset.captions:
        captions_of.setdefault(caption.image_id, []).append((caption.caption_id, caption.text))
    return captions_of


def write_shard(model: Any, rows: ImageRows, captions_of: dict[int, list[tuple[int, str]]], manifest: Manifest,
                out: Path, shard_index: int, data_root: str, batch_size: int, times: StageTimes | None = None,
                text_encoder: Any = None, skipped: list[dict] | None = None) -> int:
    """Encode the shard's captions, then write the caption shard and the image shard last (its existence marks
    the shard complete, and its metadata carries the shard's ``skipped`` images); returns the caption count.
    Every indexing path writes its shards through here."""
    times = times if times is not None else StageTimes()
    metadata = _shard_metadata(manifest, data_root, shard_index)
    image_metadata = {**metadata, SKIPPED_META: json.dumps(skipped)} if skipped else metadata
    texts = TextRows()
    if manifest.with_text:
        for image_id, source_id in zip(rows.image_id, rows.source_id):
            for caption_id, text in captions_of.get(source_id, []):
                texts.caption_id.append(caption_id)
                texts.image_id.append(image_id)
                texts.text.append(text)
        with times.timed("caption encode"):
            texts.embeddings = encode_texts(model, texts.text, batch_size, manifest.embed_dim, text_encoder)
        with times.timed("shard write"):
            write_table_atomic(out / TEXT_SHARDS_DIR / shard_name(shard_index),
                               text_table(texts, manifest.embed_dim, metadata))
    with times.timed("shard write"):
        write_table_atomic(out / SHARDS_DIR / shard_name(shard_index),
                           image_table(rows, manifest.embed_dim, image_metadata))
    return len(texts)


@dataclass
class Decoded:
    """One image's result from the decode + image-encode stages (``vector`` None when it could not be read)."""

    position: int
    vector: np.ndarray | None
    width: int
    height: int
    error: str = ""
    mask_resized: str = ""


class ShardAssembler:
    """Gathers encoded images per pending shard, in whatever order they arrive, and hands each complete shard to
    ``write(shard_index, rows, skipped)`` with its rows in plan order and the records of its unreadable images
    (image_id, path relative to the data root, reason), so every path writes the same shard bytes.

    A position delivered twice (a retried Ray task whose first attempt also came back) is counted in
    ``repeated`` and ignored; a shard is handed over exactly once."""

    def __init__(self, plan: SegmentPlan, pending: list[int], shard_size: int,
                 captions_of: dict[int, list[tuple[int, str]]], write, summary, log=None) -> None:
        self.blocks = [(plan.segment.first_shard + local, plan.shard_images(local, shard_size)) for local in pending]
        self.queue: list[PlannedImage] = [image for _, block in self.blocks for image in block]
        self.starts = np.cumsum([0] + [len(block) for _, block in self.blocks])
        self.captions_of, self.write, self.summary = captions_of, write, summary
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.partial: dict[int, dict[int, Decoded]] = {}
        self.done: set[int] = set()
        self.repeated = 0

    def add(self, result: Decoded) -> None:
        block = int(np.searchsorted(self.starts, result.position, side="right") - 1)
        if block in self.done or result.position in self.partial.get(block, {}):
            self.repeated += 1
            return
        if result.mask_resized:
            self.log(f"warning: mask {result.mask_resized} resized (nearest) to {result.width}x{result.height}")
        if result.vector is None:
            planned = self.queue[result.position]
            self.summary.skipped.append(str(planned.path))
            self.log(f"skipped unreadable image: {planned.path}: {_reason(result.error, planned.path)}")
        gathered = self.partial.setdefault(block, {})
        gathered[result.position] = result
        if len(gathered) == len(self.blocks[block][1]):
            self._complete(block)

    def _complete(self, block: int) -> None:
        gathered = self.partial.pop(block)
        self.done.add(block)
        rows, skipped = ImageRows(), []
        for position in sorted(gathered):
            result, planned = gathered[position], self.queue[position]
            if result.vector is not None:
                _append_row(rows, planned, result.vector, self.captions_of, result.width, result.height)
            else:
                skipped.append({"image_id": planned.image_id, "path": planned.rel_path,
                                "reason": _reason(result.error, planned.path)})
        self.write(self.blocks[block][0], rows, skipped)

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.blocks)


def decoded_batch(batch: dict[str, Any], vectors: np.ndarray) -> list[Decoded]:
    """Per-image results of one collated batch (``encode_decoded`` output rows aligned with the batch)."""
    return [Decoded(position=int(batch["position"][slot]), vector=vectors[slot] if batch["ok"][slot] else None,
                    width=int(batch["width"][slot]), height=int(batch["height"][slot]),
                    error=str(batch["error"][slot]), mask_resized=str(batch["mask_resized"][slot]))
            for slot in range(len(batch["position"]))]


def encode_segment(model: Any, dataset: Dataset, plan: SegmentPlan, pending: list[int], manifest: Manifest,
                   out: Path, device, batch_size: int, workers: int, summary, encoder: Any = None,
                   text_encoder: Any = None) -> None:
    """Encode and write every pending shard of ``plan`` (local shard numbers), updating ``summary``; images go
    through ``encoder`` (an ``encoders.image_runtime`` runtime; default the model itself), captions through
    ``text_encoder`` (``encoders.batch_text``; default the model)."""
    encoder = model if encoder is None else encoder
    captions_of = captions_by_image(dataset)
    times = summary.stages

    def write(shard_index: int, rows: ImageRows, skipped: list[dict]) -> None:
        summary.captions_encoded += write_shard(model, rows, captions_of, manifest, out, shard_index,
                                                plan.segment.data_root, batch_size, times, text_encoder, skipped)
        summary.encoded += len(rows)
        summary.shards_written += 1

    assembler = ShardAssembler(plan, pending, manifest.shard_size, captions_of, write, summary)
    if not assembler.queue:
        return
    items = ImageItems(assembler.queue, model.image_transform(train=False), manifest.mask)
    loader = image_loader(items, batch_size, workers, device)
    with _progress() as progress:
        assembler.log = console_log(progress.console)
        task = progress.add_task("encoding", total=len(assembler.queue))
        for batch in loader:
            times.add("decode", sum(batch["decode_seconds"]))
            with times.timed("image encode"):
                vectors = encode_decoded(encoder, batch["pixels"], batch["ok"], device)
            for result in decoded_batch(batch, vectors):
                assembler.add(result)
            progress.advance(task, len(batch["position"]))
    sys.stderr.flush()


def console_log(console):
    """Print a line above the progress bar as it is: paths may hold [brackets] that rich would read as markup."""
    return lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True)


def _reason(error: str, path: Path) -> str:
    """The loader's message without the path it starts with (the record has the path already)."""
    text = " ".join(str(error).split()) or "unreadable"
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _append_row(rows: ImageRows, planned, vector, captions_of, width: int, height: int) -> None:
    rows.image_id.append(planned.image_id)
    rows.source_id.append(planned.source_id)
    rows.path.append(planned.rel_path)
    rows.split.append(planned.split)
    rows.label.append(planned.label)
    rows.captions.append([text for _, text in captions_of.get(planned.source_id, [])])
    rows.width.append(width)
    rows.height.append(height)
    rows.embeddings.append(vector)
    rows.chips.append(planned.chip)
