"""Read a dataset split's embeddings out of an index folder, so ``engine eval --index`` scores what the index holds.

A masked index (``engine index --mask ...``) stores embeddings of masked images; re-encoding would score the
unmasked ones. Images are matched by their path relative to the dataset root together with the dataset's own
id (``source_id`` in the shards, kept even when an append renumbered ``image_id``); when an index holds two data
roots with the same relative path, the row whose absolute path is this dataset's file wins. Captions are
matched by (indexed image, caption id) and their stored text must equal the dataset's: a changed caption means
the stored embedding is of another sentence. Anything missing is one error naming the count and examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.model import Dataset
from engine.errors import DataError
from engine.evaluation.embed import SplitEmbeddings

EXAMPLES_SHOWN = 3


@dataclass(frozen=True)
class IndexedSplit:
    """Stored embeddings of one split, aligned with the dataset's order, plus the index's ids of its images."""

    embeddings: SplitEmbeddings  # image_ids: the dataset's ids; rows in split order
    index_ids: np.ndarray  # (num_images,) int64: the faiss/catalog id of each image row


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES_SHOWN])
    return shown + (f" and {len(items) - EXAMPLES_SHOWN} more" if len(items) > EXAMPLES_SHOWN else "")


def _image_rows(store, subset: Dataset, index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(index ids, (n, D) embeddings) of the split's images in split order; DataError naming what is missing."""
    wanted = [image.relative_path(subset.root) for image in subset.images]
    table = store.cursor().sql(
        "SELECT image_id, source_id, path, embedding FROM images WHERE path IN (SELECT unnest($paths))",
        params={"paths": sorted(set(wanted))}).to_arrow_table()
    ids = table.column("image_id").to_numpy().astype(np.int64)
    sources = table.column("source_id").to_pylist()
    paths = table.column("path").to_pylist()
    matrix = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                        dtype=np.float32).reshape(table.num_rows, -1)
    rows_of: dict[tuple[str, int], list[int]] = {}
    for row, (path, source) in enumerate(zip(paths, sources)):
        rows_of.setdefault((path, int(source) if source is not None else int(ids[row])), []).append(row)
    chosen, missing = [], []
    for image, rel_path in zip(subset.images, wanted):
        rows = rows_of.get((rel_path, image.image_id), [])
        if len(rows) > 1:  # the same relative path under several data roots: keep this dataset's file
            here = str(image.path.resolve())
            rows = [row for row in rows if str(Path(store.absolute_path(int(ids[row]), paths[row])).resolve()) == here]
        if len(rows) != 1:
            missing.append(rel_path)
            continue
        chosen.append(rows[0])
    if missing:
        raise DataError(f"{index_dir}: the index lacks {len(missing)} of the {len(wanted)} images of split "
                        f"{_split_name(subset)} of {subset.root} ({_examples(missing)}); index this dataset "
                        "with `engine index` (or --append it)")
    return ids[chosen], matrix[chosen]


def _split_name(subset: Dataset) -> str:
    return repr(subset.images[0].split) if subset.images else "?"


def _caption_rows(store, subset: Dataset, index_ids: np.ndarray, index_dir: Path) -> np.ndarray:
    """(num_captions, D) stored caption embeddings in the split's caption order."""
    if not store.catalog.has_captions:
        raise DataError(f"{index_dir}: the index holds no caption embeddings (built with --no-text); "
                        "rebuild it without --no-text to evaluate on it")
    index_id_of = {image.image_id: int(index_id) for image, index_id in zip(subset.images, index_ids)}
    table = store.cursor().sql(
        "SELECT caption_id, image_id, text, embedding FROM captions WHERE image_id IN (SELECT unnest($ids))",
        params={"ids": [int(value) for value in index_ids]}).to_arrow_table()
    matrix = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                        dtype=np.float32).reshape(table.num_rows, -1)
    row_of = {(int(image_id), int(caption_id)): row for row, (caption_id, image_id) in enumerate(
        zip(table.column("caption_id").to_pylist(), table.column("image_id").to_pylist()))}
    texts = table.column("text").to_pylist()
    chosen, missing, changed = [], [], []
    for caption in subset.captions:
        row = row_of.get((index_id_of[caption.image_id], caption.caption_id))
        if row is None:
            missing.append(str(caption.caption_id))
        elif texts[row] != caption.text:
            changed.append(str(caption.caption_id))
        else:
            chosen.append(row)
    if missing:
        raise DataError(f"{index_dir}: the index lacks caption embeddings for {len(missing)} of the "
                        f"{len(subset.captions)} captions of the split (caption ids {_examples(missing)}); "
                        "rebuild the index from this dataset")
    if changed:
        raise DataError(f"{index_dir}: {len(changed)} captions differ from the dataset's text (caption ids "
                        f"{_examples(changed)}); the annotations changed since indexing: rebuild the index")
    return matrix[chosen]


def read_indexed_split(store, subset: Dataset, index_dir: Path) -> IndexedSplit:
    """Stored image and caption embeddings of ``subset`` (one split of a dataset) from an opened index."""
    if not subset.captions:
        raise DataError(f"{subset.name}: the split has no captions; image-text evaluation needs captions")
    index_ids, images = _image_rows(store, subset, index_dir)
    texts = _caption_rows(store, subset, index_ids, index_dir)
    row_of = {image.image_id: row for row, image in enumerate(subset.images)}
    embeddings = SplitEmbeddings(
        image_ids=np.array([image.image_id for image in subset.images], dtype=np.int64),
        images=images,
        caption_ids=np.array([caption.caption_id for caption in subset.captions], dtype=np.int64),
        texts=texts,
        text_to_image=np.array([row_of[caption.image_id] for caption in subset.captions], dtype=np.int64),
    )
    return IndexedSplit(embeddings=embeddings, index_ids=index_ids)
