"""Which images go into which shard, with which ids — decided once per build segment and stored.

The plan of a segment (``plan/segment-NNN.parquet``: image_id, source_id, relative path, split, label, in
dataset order) is written before any encoding, so a resumed run re-derives exactly the same shard contents
even if the folder listing order changed. Id policy:

* first build: the dataset's own ids (explicit in Karpathy/PIR JSON, assigned by the data layer otherwise);
* ``--append`` of a plain image folder (kind ``images``, whose ids are only list positions): new ids continue
  above the largest id already used by any segment;
* ``--append`` of a dataset with explicit ids: those ids are kept when none of them collides with an id already
  used; if any collides, all new images are renumbered above the maximum (``source_id`` keeps the original).
Images whose absolute path is already in the index are skipped and reported as duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.data.model import Dataset
from engine.errors import DataError
from indexing.manifest import Manifest, Segment
from indexing.encode import PlannedImage
from engine.atomic import write_table_atomic
from indexing.layout import SHARDS_DIR, plan_file_name, shard_name
from indexing.geo_rows import chip_plan_column, chips_from_plan, planned_chip_columns
from indexing.shards import read_columns, shard_files

PLAIN_FOLDER_KIND = "images"


@dataclass(frozen=True)
class SegmentPlan:
    segment: Segment
    images: list[PlannedImage]
    duplicates: int = 0
    renumbered: bool = False

    def shard_images(self, local_shard: int, shard_size: int) -> list[PlannedImage]:
        return self.images[local_shard * shard_size:(local_shard + 1) * shard_size]


def used_ids_and_paths(index_dir: Path, manifest: Manifest) -> tuple[int, set[str]]:
    """Largest id planned by any earlier segment and the absolute paths already written to shards."""
    max_id = -1
    for segment in manifest.segments:
        ids = read_columns(index_dir / segment.plan_file, ["image_id"]).column("image_id")
        if len(ids):
            max_id = max(max_id, pc.max(ids).as_py())
    paths: set[str] = set()
    for shard in shard_files(index_dir, SHARDS_DIR):
        root = Path(pq.read_schema(shard).metadata.get(b"engine.data_root", b"").decode())
        for rel_path in read_columns(shard, ["path"]).column("path").to_pylist():
            paths.add(str(root / rel_path))
    return max_id, paths


def new_segment_plan(dataset: Dataset, index_dir: Path, manifest: Manifest, shard_size: int) -> SegmentPlan:
    """Plan the images of ``dataset`` not yet indexed as the next segment (the whole dataset on first build)."""
    root = dataset.root.resolve()
    max_id, known_paths = used_ids_and_paths(index_dir, manifest) if manifest.segments else (-1, set())
    fresh = [record for record in dataset.images if str(record.path.resolve()) not in known_paths]
    duplicates = len(dataset.images) - len(fresh)
    renumber = bool(manifest.segments) and (PLAIN_FOLDER_KIND in (dataset.kind, getattr(dataset, "format", ""))
                                            or any(record.image_id <= max_id for record in fresh))
    images = [PlannedImage(image_id=max_id + 1 + position if renumber else record.image_id,
                           source_id=record.image_id, path=record.path.resolve(),
                           rel_path=record.relative_path(dataset.root), split=record.split, label=record.label,
                           chip=record.chip)
              for position, record in enumerate(fresh)]
    number = len(manifest.segments)
    segment = Segment(plan_file=plan_file_name(number), data_root=str(root), first_shard=manifest.shard_total,
                      shard_count=-(-len(images) // shard_size), planned_images=len(images))
    if images:
        table = pa.table({
            "image_id": pa.array([image.image_id for image in images], pa.int64()),
            "source_id": pa.array([image.source_id for image in images], pa.int64()),
            "path": pa.array([image.rel_path for image in images], pa.string()),
            "split": pa.array([image.split for image in images], pa.string()),
            "label": pa.array([image.label for image in images], pa.string()),
            **chip_plan_column(images),
        })
        write_table_atomic(index_dir / segment.plan_file, table)
    return SegmentPlan(segment=segment, images=images, duplicates=duplicates, renumbered=renumber and bool(images))


def load_segment_plan(segment: Segment, index_dir: Path) -> SegmentPlan:
    """Re-read a stored plan (resume); absolute paths are rebuilt from the segment's data root."""
    names = ["image_id", "source_id", "path", "split", "label"]
    table = read_columns(index_dir / segment.plan_file, names + planned_chip_columns(index_dir / segment.plan_file))
    root = Path(segment.data_root)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    chips = chips_from_plan(columns, table.num_rows)
    images = [PlannedImage(image_id=image_id, source_id=source_id, path=root / rel_path, rel_path=rel_path,
                           split=split, label=label, chip=chip)
              for image_id, source_id, rel_path, split, label, chip in zip(
                  columns["image_id"], columns["source_id"], columns["path"], columns["split"], columns["label"],
                  chips)]
    if len(images) != segment.planned_images:
        raise DataError(f"{index_dir / segment.plan_file}: holds {len(images)} images, the manifest expects "
                        f"{segment.planned_images}; rebuild with --overwrite")
    return SegmentPlan(segment=segment, images=images)


def pending_shards(segment: Segment, index_dir: Path) -> list[int]:
    """Local shard numbers of ``segment`` whose image shard file does not exist yet."""
    return [local for local in range(segment.shard_count)
            if not (index_dir / SHARDS_DIR / shard_name(segment.first_shard + local)).exists()]
