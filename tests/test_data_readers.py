"""Readers for every supported layout, in the published schemas, plus label derivation and detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.data import load_dataset
from engine.data.identify import match_manifest
from engine.data.labels import label_from_filename
from engine.errors import DataError

from data_helpers import CAPTIONS_PER_IMAGE, make_image, small_ucm, write_karpathy


@pytest.mark.parametrize(
    ("filename", "label"),
    [
        ("airport_12.jpg", "airport"),
        ("denseresidential_3.jpg", "denseresidential"),
        ("baseballfield_102.tif", "baseballfield"),
        ("Airport-7.png", "airport"),
        ("00017.jpg", None),
        ("1.tif", None),
        ("nodigits.jpg", None),
    ],
)
def test_label_from_filename(filename: str, label: str | None) -> None:
    assert label_from_filename(filename) == label


def test_rsicd_schema_folder_and_labels(tmp_path: Path) -> None:
    files = [("airport_1.jpg", "train"), ("beach_2.jpg", "train"), ("00017.jpg", "val"), ("airport_3.jpg", "test")]
    write_karpathy(tmp_path, "dataset_rsicd.json", "RSICD_images", files, dataset_name="rsicd")
    dataset = load_dataset(tmp_path)
    assert dataset.format == "karpathy" and dataset.kind == "rsicd"
    assert [image.path.parent.name for image in dataset.images] == ["RSICD_images"] * 4
    assert [image.label for image in dataset.images] == ["airport", "beach", None, "airport"]
    assert dataset.unlabelled == ["RSICD_images/00017.jpg"]
    assert dataset.split_counts() == {"train": 2, "val": 1, "test": 1}
    assert len(dataset.captions) == 4 * CAPTIONS_PER_IMAGE
    assert dataset.captions[6].caption_id == 6 and dataset.captions[6].image_id == 1
    assert dataset.captions[0].text == "a scene 0 number 0 ."
    assert dataset.split("test").images[0].image_id == 3


def test_rsitmd_schema_tif_names(tmp_path: Path) -> None:
    files = [("baseballfield_102.tif", "train"), ("boat_4.tif", "val"), ("bridge_1.tif", "test")]
    write_karpathy(tmp_path, "dataset_RSITMD.json", "images", files, dataset_name="rsitmd")
    dataset = load_dataset(tmp_path / "dataset_RSITMD.json")  # a path to the JSON works too
    assert dataset.kind == "rsitmd"
    assert dataset.classes == ["baseballfield", "boat", "bridge"]
    assert all(image.path.suffix == ".tif" and image.path.is_file() for image in dataset.images)


def test_sydney_schema_imgs_folder_numeric_names(tmp_path: Path) -> None:
    files = [("1.tif", "train"), ("2.tif", "train"), ("3.tif", "val"), ("4.tif", "test")]
    write_karpathy(tmp_path, "dataset.json", "imgs", files, dataset_name="sydney", size=(50, 50))
    dataset = load_dataset(tmp_path)
    assert dataset.images[0].path == (tmp_path / "imgs" / "1.tif").resolve()
    assert dataset.classes == [] and len(dataset.unlabelled) == 4
    assert dataset.kind == "karpathy"  # nothing identifies it: no classes, counts far from any manifest


def test_ucm_class_field_wins_over_file_name(tmp_path: Path) -> None:
    dataset = load_dataset(small_ucm(tmp_path))
    assert dataset.classes == ["agricultural", "airplane"] and not dataset.unlabelled
    assert match_manifest(dataset) is not None and dataset.kind == "ucm_captions"


def test_sydney_classes_identify_sydney(tmp_path: Path) -> None:
    classes = ["residential", "airport", "meadow", "river", "ocean", "industrial", "runway"]
    files = [(f"{n}.tif", "train") for n in range(1, 8)]
    write_karpathy(tmp_path, "dataset.json", "images", files, classes=classes)
    assert load_dataset(tmp_path).kind == "sydney_captions"


def test_tokens_only_caption_is_joined(tmp_path: Path) -> None:
    write_karpathy(tmp_path, "dataset.json", "images", [("a_1.jpg", "train")])
    document = json.loads((tmp_path / "dataset.json").read_text())
    del document["images"][0]["sentences"][0]["raw"]
    (tmp_path / "dataset.json").write_text(json.dumps(document))
    assert load_dataset(tmp_path).captions[0].text == "a scene 0 0"


def _write_pir(root: Path) -> None:
    train = [
        {"image": "airport_1.jpg", "caption": f"airport caption {k}", "image_id": 0, "label": "airport"}
        for k in range(3)
    ] + [{"image": "beach_9.jpg", "caption": "sand and sea", "image_id": 1, "label": 4}]
    val = [{"image": "00017.jpg", "caption": ["one", "two"]}]
    test = [{"image": "bridge_2.jpg", "caption": ["a bridge", "a river", "cars"]}]
    for split, entries in (("train", train), ("val", val), ("test", test)):
        (root / f"rsicd_{split}.json").write_text(json.dumps(entries))
    for name in ("airport_1.jpg", "beach_9.jpg", "00017.jpg", "bridge_2.jpg"):
        make_image(root / "images" / name)


def test_pir_json_ids_labels_and_splits(tmp_path: Path) -> None:
    _write_pir(tmp_path)
    dataset = load_dataset(tmp_path)
    assert dataset.format == "pir" and dataset.name == "rsicd"
    assert [(i.image_id, i.path.name, i.split, i.label) for i in dataset.images] == [
        (0, "airport_1.jpg", "train", "airport"),
        (1, "beach_9.jpg", "train", "beach"),  # integer label -> name from the file name
        (2, "00017.jpg", "val", None),
        (3, "bridge_2.jpg", "test", "bridge"),
    ]
    assert [c.caption_id for c in dataset.captions] == list(range(9))
    assert [len(c) for c in dataset.captions_by_image().values()] == [3, 1, 2, 3]
    assert dataset.unlabelled == ["images/00017.jpg"]
    # Reading through one split file gives the same dataset with the same ids.
    again = load_dataset(tmp_path / "rsicd_test.json")
    assert again.images == dataset.images and again.captions == dataset.captions


def test_pir_image_in_two_splits_is_an_error(tmp_path: Path) -> None:
    _write_pir(tmp_path)
    (tmp_path / "rsicd_test.json").write_text(json.dumps([{"image": "airport_1.jpg", "caption": ["x"]}]))
    with pytest.raises(DataError, match=r"rsicd_test\.json: \[0\]\.image: airport_1\.jpg is in both train and test"):
        load_dataset(tmp_path)


def test_scene_folders_aid_layout(tmp_path: Path) -> None:
    for cls, count in (("Airport", 3), ("DenseResidential", 2)):
        for n in range(1, count + 1):
            make_image(tmp_path / cls / f"{cls.lower()}_{n}.jpg")
    (tmp_path / "Airport" / "notes.txt").write_text("not an image")
    dataset = load_dataset(tmp_path)
    assert dataset.format == "scene_folders" and dataset.captions == []
    assert dataset.classes == ["Airport", "DenseResidential"]
    assert [i.path.name for i in dataset.images][:3] == ["airport_1.jpg", "airport_2.jpg", "airport_3.jpg"]
    assert {i.split for i in dataset.images} == {None}
    assert [i.image_id for i in dataset.images] == list(range(5))


def test_plain_image_folder(tmp_path: Path) -> None:
    for name in ("river_10.png", "river_2.png", "0042.jpg"):
        make_image(tmp_path / name)
    dataset = load_dataset(tmp_path)
    assert dataset.format == "images" and dataset.kind == "images"
    assert [i.path.name for i in dataset.images] == ["0042.jpg", "river_2.png", "river_10.png"]
    assert dataset.unlabelled == ["0042.jpg"] and dataset.classes == ["river"]


def test_real_ucm_reads_with_its_ids(ucm_dir: Path) -> None:
    dataset = load_dataset(ucm_dir)
    assert dataset.kind == "ucm_captions"
    assert (len(dataset.images), len(dataset.captions), len(dataset.classes)) == (2100, 10500, 21)
    assert dataset.images[0].image_id == 0 and dataset.images[0].path.name == "1.jpg"
    assert dataset.split_counts() == {"train": 1680, "val": 210, "test": 210}


def test_real_aid_is_a_30_class_scene_set(aid_dir: Path) -> None:
    dataset = load_dataset(aid_dir)
    assert dataset.kind == "aid" and dataset.format == "scene_folders"
    assert len(dataset.images) == 10000 and len(dataset.classes) == 30 and dataset.has_labels
