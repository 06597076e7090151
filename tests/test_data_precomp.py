"""The precomp text layout (RSICD/RSITMD as AMFMN publishes them), the carved val split, near-duplicate images.

Fixtures are small folders in the published layout (CI has no RSICD); the real RSITMD caption files are mirrored
in miniature: test_filename.txt one line per caption, train_filename.txt one line per image.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_helpers import make_image
from engine.data import load_dataset
from engine.data.check import check_dataset
from engine.data.near_duplicates import duplicate_of, fingerprints
from engine.data.splits import carve_val, val_count
from engine.errors import DataError

CLASSES = ("airport", "beach", "forest")


def write_precomp(root: Path, train: list[str], test: list[str], per_image: int = 5, image_dir: str = "RSICD_images",
                  repeated: bool = False, write_images: bool = True) -> Path:
    """train_filename.txt one line per image, test_filename.txt one line per caption (as published)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, names in (("train", train), ("test", test)):
        captions, filenames = [], []
        for name in names:
            for k in range(per_image):
                captions.append(f"{name.split('.')[0]} seen from above ." if repeated else f"{name} caption {k} .")
                filenames.append(name)
        (root / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
        listed = filenames if split == "test" else names
        (root / f"{split}_filename.txt").write_text("\n".join(listed) + "\n")
    if write_images:
        for position, name in enumerate(train + test):
            make_image(root / image_dir / name, shade=(7 * position) % 250)
    return root


def _names(count_per_class: int, start: int = 0) -> list[str]:
    return [f"{label}_{start + n}.jpg" for label in CLASSES for n in range(count_per_class)]


def test_precomp_reads_both_filename_conventions_and_carves_val(tmp_path: Path) -> None:
    root = write_precomp(tmp_path / "rsicd_precomp", _names(10) + ["00017.jpg"], _names(2, start=50))
    dataset = load_dataset(root)
    assert dataset.format == "precomp" and dataset.name == "rsicd"
    assert len(dataset.images) == 31 + 6 and len(dataset.captions) == 5 * 37
    by_image = dataset.captions_by_image()
    assert all(len(captions) == 5 for captions in by_image.values())
    test = dataset.split("test")
    assert {image.path.name for image in test.images} == set(_names(2, start=50))
    # caption i of test_caps.txt belongs to line i of test_filename.txt
    first = test.images[0]
    assert [c.text for c in by_image[first.image_id]] == [f"{first.path.name} caption {k} ." for k in range(5)]
    # no val split was published: 10 % of train (3 of 31), one per class, the numeric file kept in train
    counts = dataset.split_counts()
    assert counts == {"train": 28, "val": 3, "test": 6}
    assert Counter(image.label for image in dataset.images if image.split == "val") == Counter(CLASSES)
    assert dataset.notes and "no val split; 3 of the 31 train images" in dataset.notes[0]
    assert dataset.image(dataset.images[-1].image_id).path.parent.name == "RSICD_images"


def test_carved_val_is_deterministic_stratified_and_exact(tmp_path: Path) -> None:
    root = write_precomp(tmp_path / "d", _names(40) + [f"{n:05d}.jpg" for n in range(9)], _names(1, start=90),
                         per_image=1)
    first, second = load_dataset(root), load_dataset(root)
    val = [image.path.name for image in first.images if image.split == "val"]
    assert val == [image.path.name for image in second.images if image.split == "val"]
    assert len(val) == val_count(129) == 13
    by_class = Counter(image.label for image in first.images if image.split == "val")
    assert by_class == Counter({"airport": 4, "beach": 4, "forest": 4, None: 1})  # 40/129*13 = 4.03 each; 0.91
    # another seed moves other images, in the same numbers
    merged = dataclasses.replace(first, images=[dataclasses.replace(i, split="train") if i.split == "val" else i
                                                for i in first.images])
    other = carve_val(merged, 13, seed=7)
    assert Counter(i.label for i in other.images if i.split == "val") == by_class
    assert [i.path.name for i in other.images if i.split == "val"] != val


def test_published_val_size_when_train_is_train_plus_val() -> None:
    assert val_count(9828, (8734, 1094)) == 1094  # RSICD precomp: the Karpathy val size
    assert val_count(4291, (3435, 856)) == 856  # RSITMD precomp
    assert val_count(500, (8734, 1094)) == 50  # a subset: 10 %
    assert val_count(1) == 0


def test_images_elsewhere_with_images_flag(tmp_path: Path) -> None:
    root = write_precomp(tmp_path / "caps", _names(4), _names(1, start=9), write_images=False)
    for position, name in enumerate(_names(4) + _names(1, start=9)):
        make_image(tmp_path / "pictures" / name, shade=position)
    with pytest.raises(DataError, match="image listed in train_caps.txt not found"):
        load_dataset(root)
    dataset = load_dataset(root, images=tmp_path / "pictures")
    assert all(image.path.parent == (tmp_path / "pictures").resolve() for image in dataset.images)
    with pytest.raises(DataError, match="--images .*no such folder"):
        load_dataset(root, images=tmp_path / "nowhere")


def test_a_caps_file_path_reads_its_folder(tmp_path: Path) -> None:
    root = write_precomp(tmp_path / "d", _names(4), _names(1, start=9))
    assert len(load_dataset(root / "test_caps.txt").images) == 15


@pytest.mark.parametrize("mutate, message", [
    (lambda root: (root / "train_filename.txt").write_text("\n".join(_names(4)[:7]) + "\n"),
     r"train_filename.txt: 7 file names for the 60 captions of train_caps.txt"),
    (lambda root: (root / "test_filename.txt").unlink(), r"test_filename.txt: not found"),
    (lambda root: (root / "test_caps.txt").write_bytes(b"\xff\xfe bad"), r"test_caps.txt: not UTF-8"),
    (lambda root: (root / "test_filename.txt").write_text(
        "\n".join(["airport_0.jpg"] * 15) + "\n"), r"airport_0.jpg is also listed in the train split"),
    (lambda root: (root / "train_caps.txt").write_text(
        "\n".join(["a caption ."] * 29 + [" "] + ["a caption ."] * 30) + "\n"),
     r"train_caps.txt: line 30: caption of beach_1.jpg is empty"),
])
def test_bad_precomp_files_give_one_line(tmp_path: Path, mutate, message: str) -> None:
    root = write_precomp(tmp_path / "d", _names(4), _names(1, start=9))
    mutate(root)
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_data_check_names_the_layout_and_the_carve(tmp_path: Path) -> None:
    root = write_precomp(tmp_path / "rsitmd_precomp", _names(10), _names(2, start=50))
    report = check_dataset(root).as_dict()
    assert report["format"] == "precomp" and report["usable"]
    assert report["splits"] == {"train": 27, "val": 3, "test": 6}
    assert any(note["code"] == "val-carved" for note in report["notes"])
    run = subprocess.run([sys.executable, "-m", "engine", "data", "check", str(root), "--quick"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "train_caps.txt + train_filename.txt" in run.stdout and "precomp" in run.stdout
    assert "no val split; 3 of the 30 train images" in run.stdout


def _scene(path: Path, seed: int, size: int = 96) -> Path:
    """A textured image (smooth blobs + edges) so that resizing keeps its structure."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (6, 6, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95)
    return path


def test_near_duplicates_survive_resizing_and_reencoding_only(tmp_path: Path) -> None:
    references = [_scene(tmp_path / "ref" / f"{n}.png", seed=n) for n in range(20)]
    copy = tmp_path / "cand" / "copy.jpg"
    copy.parent.mkdir()
    Image.open(references[3]).resize((61, 61), Image.Resampling.BILINEAR).save(copy, quality=60)
    exact = tmp_path / "cand" / "exact.png"
    exact.write_bytes(references[11].read_bytes())
    others = [_scene(tmp_path / "cand" / f"other{n}.png", seed=100 + n) for n in range(30)]
    flipped = tmp_path / "cand" / "flipped.png"  # a mirror image is a different picture of the ground
    Image.open(references[5]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    flat = [tmp_path / "cand" / f"flat{n}.png" for n in range(3)]  # near-uniform noise: hashes collide by chance
    for n, path in enumerate(flat):
        noise = np.random.default_rng(500 + n).normal(128, 2, (64, 64, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(noise).save(path)
    flat_refs = [tmp_path / "ref" / f"flat{n}.png" for n in range(3)]
    for n, path in enumerate(flat_refs):
        noise = np.random.default_rng(900 + n).normal(128, 2, (64, 64, 3)).clip(0, 255).astype(np.uint8)
        Image.fromarray(noise).save(path)
    candidates = [copy, exact, flipped, *others, *flat]
    found = duplicate_of(fingerprints(candidates), fingerprints(references + flat_refs))
    assert found[0] == 3 and found[1] == 11
    assert (found[2:] == -1).all()


def test_a_hash_collision_needs_correlating_thumbnails_to_count() -> None:
    from engine.data.near_duplicates import THUMB_SIDE, Fingerprints

    rng = np.random.default_rng(0)
    thumbs = rng.normal(size=(3, THUMB_SIDE ** 2)).astype(np.float32)
    thumbs /= np.linalg.norm(thumbs, axis=1, keepdims=True)
    references = Fingerprints(np.array([5, 5], dtype=np.uint64), thumbs[:2])
    # same hash as both references: the first matches the thumbnail of reference 1, the second matches none
    candidates = Fingerprints(np.array([5, 5], dtype=np.uint64), np.stack([thumbs[1], thumbs[2]]))
    assert duplicate_of(candidates, references).tolist() == [1, -1]


def test_index_and_eval_read_a_precomp_folder_with_its_images_elsewhere(tmp_path: Path, capsys) -> None:
    import encoders
    from engine.cli import main

    root = write_precomp(tmp_path / "caps", _names(4), _names(2, start=9), write_images=False)
    for position, name in enumerate(_names(4) + _names(2, start=9)):
        _scene(tmp_path / "pictures" / name, seed=position, size=40)
    model = tmp_path / "model"
    encoders.save_model(encoders.create_model("tiny-test"), model)
    out = tmp_path / "idx"
    assert main(["index", str(root), "--images", str(tmp_path / "pictures"), "--out", str(out), "--model",
                 str(model), "--workers", "0"]) == 0
    assert "no val split; 1 of the 12 train images" in capsys.readouterr().err
    result = tmp_path / "eval.json"
    assert main(["eval", str(root), "--images", str(tmp_path / "pictures"), "--model", str(model), "--split",
                 "test", "--out", str(result)]) == 0
    record = json.loads(result.read_text())
    assert record["dataset"]["images"] == 6 and record["dataset"]["captions"] == 30
    low, high = record["recalls_interval"]["bounds"]["mR"]  # 1000 image-bootstrap draws by default
    assert record["recalls_interval"]["draws"] == 1000 and low <= round(record["recalls"]["mR"], 2) <= high
    assert "mR 95% interval" in capsys.readouterr().out
    assert main(["eval", str(root), "--images", str(tmp_path / "pictures"), "--model", str(model), "--bootstrap",
                 "0", "--out", str(result)]) == 0
    assert json.loads(result.read_text())["recalls_interval"] == {}
    assert main(["eval", str(root), "--images", str(tmp_path / "pictures"), "--bootstrap", "-1"]) == 2
    assert "--bootstrap must be 0" in capsys.readouterr().err
    assert main(["eval", str(root), "--model", str(model)]) == 2  # images not beside the captions: one line
    assert capsys.readouterr().err.count("error:") == 1
