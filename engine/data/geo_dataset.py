"""Turning the GeoTIFF scenes of a dataset into chips (``engine index`` on a scene, a folder of them, or a folder
mixing scenes with plain images).

A caption-less collection (a single file, an image folder, class folders) has each georeferenced .tif replaced by
its chips (``engine.data.geo_scenes.plan_scene``), in file order; plain images and .tif files without
georeferencing stay single rows (the latter said once in the notes). Ids are positions in the new list, as for
any image folder. A caption dataset is left alone: its captions describe whole images.
"""

from __future__ import annotations

from dataclasses import replace

from engine.data.geo_scenes import GeoOptions, SceneReport, TIFF_SUFFIXES, is_georeferenced, open_raster, plan_scene
from engine.data.model import Dataset, ImageRecord
from engine.errors import DataError


def expand_scenes(dataset: Dataset, options: GeoOptions, chip_size: int) -> tuple[Dataset, SceneReport]:
    """``dataset`` with every GeoTIFF scene cut into chips, and the report of what was found."""
    report = SceneReport()
    if dataset.captions or not any(record.path.suffix.lower() in TIFF_SUFFIXES for record in dataset.images):
        return dataset, report
    records: list[ImageRecord] = []
    for record in dataset.images:
        if not _is_scene(record, report, dataset):
            records.append(replace(record, image_id=len(records)))
            continue
        for chip in plan_scene(record.path, options, chip_size, report):
            records.append(replace(record, image_id=len(records), chip=chip))
    if report.scenes and not records:
        raise DataError(f"{dataset.root}: every chip of the {report.scenes} scene(s) is empty (all nodata); "
                        "nothing to index")
    expanded = Dataset(name=dataset.name, kind=dataset.kind, root=dataset.root, images=records, captions=[],
                       annotation_file=dataset.annotation_file, unlabelled=list(dataset.unlabelled),
                       format=dataset.format, notes=[*dataset.notes, *report.notes()])
    return expanded, report


def _is_scene(record: ImageRecord, report: SceneReport, dataset: Dataset) -> bool:
    if record.path.suffix.lower() not in TIFF_SUFFIXES or not record.path.is_file():
        return False
    try:
        with open_raster(record.path) as raster:
            georeferenced = is_georeferenced(raster)
    except DataError:
        return False  # not a raster GDAL reads: the plain image path decodes it or skips it with a reason
    if not georeferenced:
        report.plain_tiffs.append(record.relative_path(dataset.root))
    return georeferenced
