"""Encode the pending shards of one segment and write them, with a progress bar (images/s, ETA).

One DataLoader streams every pending image in plan order; results are gathered per shard and the shard is
written as soon as its last planned image has come back, so memory is bounded by one shard plus the
loader's prefetch, never by the dataset. Images that cannot be read are skipped: their id, path and reason
go into the image shard's metadata (``engine.skipped``), so the record is written atomically with the shard
and a resumed build still knows them; ``indexing.skipped`` lists them all in ``skipped.jsonl``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from engine.data.model import Dataset
from indexing.config import Manifest
from indexing.encode import ImageItems, encode_pixels, encode_texts, image_loader
from indexing.plan import SegmentPlan
from indexing.shards import (SHARDS_DIR, TEXT_SHARDS_DIR, ImageRows, TextRows, image_table, shard_name, text_table,
                             write_table_atomically)
from indexing.skipped import SKIPPED_META


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


def _write_shard(model: Any, rows: ImageRows, captions_of: dict[int, list[tuple[int, str]]], manifest: Manifest,
                 out: Path, shard_index: int, data_root: str, batch_size: int, skipped: list[dict]) -> int:
    """Caption shard first, image shard last (its existence marks the shard complete); returns captions."""
    metadata = _shard_metadata(manifest, data_root, shard_index)
    image_metadata = {**metadata, SKIPPED_META: json.dumps(skipped)} if skipped else metadata
    texts = TextRows()
    if manifest.with_text:
        for image_id, source_id in zip(rows.image_id, rows.source_id):
            for caption_id, text in captions_of.get(source_id, []):
                texts.caption_id.append(caption_id)
                texts.image_id.append(image_id)
                texts.text.append(text)
        texts.embeddings = encode_texts(model, texts.text, batch_size, manifest.embed_dim)
        write_table_atomically(text_table(texts, manifest.embed_dim, metadata),
                               out / TEXT_SHARDS_DIR / shard_name(shard_index))
    write_table_atomically(image_table(rows, manifest.embed_dim, image_metadata),
                           out / SHARDS_DIR / shard_name(shard_index))
    return len(texts)


def encode_segment(model: Any, dataset: Dataset, plan: SegmentPlan, pending: list[int], manifest: Manifest,
                   out: Path, device, batch_size: int, workers: int, summary) -> None:
    """Encode and write every pending shard of ``plan`` (local shard numbers), updating ``summary``."""
    shard_size, segment = manifest.shard_size, plan.segment
    captions_of: dict[int, list[tuple[int, str]]] = {}
    for caption in dataset.captions:
        captions_of.setdefault(caption.image_id, []).append((caption.caption_id, caption.text))
    blocks = [(local, plan.shard_images(local, shard_size)) for local in pending]
    queue = [image for _, image_block in blocks for image in image_block]
    if not queue:
        return
    items = ImageItems(queue, model.image_transform(train=False), manifest.mask)
    loader = image_loader(items, batch_size, workers, device)
    block_number, rows, skipped, remaining = 0, ImageRows(), [], len(blocks[0][1])
    with _progress() as progress:
        task = progress.add_task("encoding", total=len(queue))
        for batch in loader:
            good = [slot for slot, ok in enumerate(batch["ok"]) if ok]
            vectors = encode_pixels(model, batch["pixels"][good], device) if good else None
            vector_of = {slot: vectors[row] for row, slot in enumerate(good)}
            for slot, position in enumerate(batch["position"]):
                planned = queue[position]
                if batch["mask_resized"][slot]:
                    progress.console.print(f"warning: mask {batch['mask_resized'][slot]} resized (nearest) to "
                                           f"{batch['width'][slot]}x{batch['height'][slot]}")
                if slot in vector_of:
                    _append_row(rows, planned, vector_of[slot], captions_of, batch["width"][slot],
                                batch["height"][slot])
                else:
                    reason = _reason(batch["error"][slot], planned.path)
                    skipped.append({"image_id": planned.image_id, "path": planned.rel_path, "reason": reason})
                    summary.skipped.append(str(planned.path))
                    progress.console.print(f"skipped unreadable image: {planned.path}: {reason}",
                                           markup=False, highlight=False, soft_wrap=True)
                remaining -= 1
                if remaining == 0:
                    shard_index = segment.first_shard + blocks[block_number][0]
                    summary.captions_encoded += _write_shard(model, rows, captions_of, manifest, out, shard_index,
                                                             segment.data_root, batch_size, skipped)
                    summary.encoded += len(rows)
                    summary.shards_written += 1
                    block_number += 1
                    rows, skipped = ImageRows(), []
                    remaining = len(blocks[block_number][1]) if block_number < len(blocks) else -1
            progress.advance(task, len(batch["position"]))
    sys.stderr.flush()


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
