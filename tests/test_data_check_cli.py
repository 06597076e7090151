"""``engine data check`` through the real CLI: good data exits 0, every bad input gives one clear line, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import main

from data_helpers import load_json, make_image, save_json, small_ucm


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["data", "check", *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_good_fixture_is_usable_and_json_is_machine_readable(tmp_path: Path, capsys) -> None:
    small_ucm(tmp_path)
    code, out, _ = run(capsys, str(tmp_path), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["usable"] and report["dataset"] == "ucm_captions" and report["format"] == "karpathy"
    assert (report["images"], report["captions"], report["classes"]) == (6, 30, 2)
    assert report["splits"] == {"train": 4, "val": 1, "test": 1}
    assert report["errors"] == [] and {w["code"] for w in report["warnings"]} >= {"image-count", "split-sizes"}
    code, out, _ = run(capsys, str(tmp_path))
    assert code == 0 and "usable" in out and "UCM-captions" in out


def test_missing_folder(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, str(tmp_path / "absent"))
    assert code == 2 and error_lines(err) == [f"error: {tmp_path / 'absent'}: no such file or folder"]


def test_folder_without_recognised_json(tmp_path: Path, capsys) -> None:
    save_json(tmp_path / "notes.json", {"hello": "world"})
    code, _, err = run(capsys, str(tmp_path))
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "no recognised annotation JSON (found notes.json" in lines[0]


def test_malformed_json(tmp_path: Path, capsys) -> None:
    (tmp_path / "dataset.json").write_text('{"images": [ {"filename": "1.jpg",, } ]}')
    code, _, err = run(capsys, str(tmp_path))
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1
    assert "dataset.json: malformed JSON at line 1 column" in lines[0]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"pictures": []}, "dataset.json: unrecognised JSON schema; expected a Karpathy caption file"),
        ([1, 2, 3], "unrecognised JSON schema"),
        ({"images": [{"filename": "1.jpg", "imgid": "one", "split": "train", "sentences": []}]},
         "images[0].imgid: expected an integer id, got 'one'"),
    ],
)
def test_wrong_schema(tmp_path: Path, capsys, document, expected: str) -> None:
    save_json(tmp_path / "dataset.json", document)
    code, _, err = run(capsys, str(tmp_path))
    assert code != 0 and any(expected in line for line in error_lines(err)), err


def test_listed_image_missing(tmp_path: Path, capsys) -> None:
    small_ucm(tmp_path)
    (tmp_path / "images" / "2.jpg").unlink()
    code, _, err = run(capsys, str(tmp_path))
    assert code == 1
    assert f"error: {(tmp_path / 'images' / '2.jpg').resolve()}: image listed in dataset.json not found" in err


def test_truncated_and_corrupt_images(tmp_path: Path, capsys) -> None:
    small_ucm(tmp_path)
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    target = tmp_path / "images" / "3.jpg"
    Image.fromarray(noise).save(target, quality=95)
    target.write_bytes(target.read_bytes()[:-600])
    (tmp_path / "images" / "101.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    code, out, err = run(capsys, str(tmp_path))
    lines = error_lines(err)
    assert code == 1 and len(lines) == 2
    assert "3.jpg: cannot decode image (image file is truncated" in lines[0]
    assert "101.jpg: cannot decode image" in lines[1]
    assert "NOT usable: 2 errors" in out
    # --quick reads headers only: the truncated file slips through, the garbage one does not.
    code, _, err = run(capsys, str(tmp_path), "--quick")
    assert code == 1 and len(error_lines(err)) == 1


def test_zero_byte_image(tmp_path: Path, capsys) -> None:
    small_ucm(tmp_path)
    (tmp_path / "images" / "102.jpg").write_bytes(b"")
    code, _, err = run(capsys, str(tmp_path))
    empty = (tmp_path / "images" / "102.jpg").resolve()
    assert code == 1 and error_lines(err) == [f"error: {empty}: image file is empty (0 bytes)"]


def test_non_rgb_images_are_converted_not_rejected(tmp_path: Path, capsys) -> None:
    small_ucm(tmp_path)
    make_image(tmp_path / "images" / "1.jpg", mode="L")
    rgba = tmp_path / "images" / "2.jpg"
    make_image(rgba.with_suffix(".png"), mode="RGBA").rename(rgba)  # PNG content under the listed name
    Image.fromarray(np.full((24, 24), 3000, dtype=np.uint16)).save(tmp_path / "images" / "3.jpg", format="TIFF")
    code, out, err = run(capsys, str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 0 and report["usable"] and report["errors"] == []
    assert report["image_modes"]["L"] == 1 and report["image_modes"]["RGBA"] == 1
    assert any(n["code"] == "converted" and "3 non-RGB images are converted" in n["message"] for n in report["notes"])


@pytest.mark.parametrize("text", ["", "   \t "])
def test_empty_or_whitespace_caption(tmp_path: Path, capsys, text: str) -> None:
    small_ucm(tmp_path)
    document = load_json(tmp_path / "dataset.json")
    document["images"][2]["sentences"][1]["raw"] = text
    save_json(tmp_path / "dataset.json", document)
    code, _, err = run(capsys, str(tmp_path))
    assert code == 1
    assert error_lines(err) == ["error: dataset.json: images[2].sentences[1].raw: caption 11 of 3.jpg is empty"]


def test_duplicate_image_and_caption_ids(tmp_path: Path, capsys) -> None:
    small_ucm(tmp_path)
    document = load_json(tmp_path / "dataset.json")
    document["images"][4]["imgid"] = 1
    document["images"][5]["sentences"][0]["sentid"] = 0
    save_json(tmp_path / "dataset.json", document)
    code, _, err = run(capsys, str(tmp_path))
    lines = error_lines(err)
    assert code == 1
    assert "error: dataset.json: images[4].imgid: image id 1 of 102.jpg is already used by 2.jpg" in lines
    assert any("images[5].sentences[0].sentid: caption id 0 is already used" in line for line in lines)


def test_bad_split_name(tmp_path: Path, capsys) -> None:
    small_ucm(tmp_path)
    document = load_json(tmp_path / "dataset.json")
    document["images"][0]["split"] = "training"
    save_json(tmp_path / "dataset.json", document)
    code, _, err = run(capsys, str(tmp_path))
    assert code == 1
    expected = "error: dataset.json: images[0].split: 'training' for 1.jpg is not one of train/val/test"
    assert error_lines(err) == [expected]


def test_many_problems_are_capped(tmp_path: Path, capsys) -> None:
    small_ucm(tmp_path)
    document = load_json(tmp_path / "dataset.json")
    for entry in document["images"]:
        for sentence in entry["sentences"]:
            sentence["raw"] = " "
    save_json(tmp_path / "dataset.json", document)
    code, out, _ = run(capsys, str(tmp_path), "--json")
    report = json.loads(out)
    assert code == 1 and len(report["errors"]) == 36  # 30 empty captions + 6 images left without captions
    code, _, err = run(capsys, str(tmp_path))
    hidden = len(report["errors"]) + len(report["warnings"]) - 20
    assert code == 1 and len(error_lines(err)) == 20 and err.rstrip().endswith(f"... and {hidden} more")


def test_strict_loader_raises_the_first_problem(tmp_path: Path) -> None:
    from engine.data import load_dataset
    from engine.errors import DataError

    small_ucm(tmp_path)
    (tmp_path / "images" / "103.jpg").unlink()
    with pytest.raises(DataError, match=r"103\.jpg: image listed in dataset\.json not found"):
        load_dataset(tmp_path)


def test_real_ucm_check(ucm_dir: Path, capsys) -> None:
    code, out, _ = run(capsys, str(ucm_dir), "--json")
    report = json.loads(out)
    assert code == 0 and report["usable"] and report["dataset"] == "ucm_captions"
    assert (report["images"], report["captions"], report["classes"]) == (2100, 10500, 21)
    assert report["splits"] == {"train": 1680, "val": 210, "test": 210}
    assert report["captions_per_image"] == {"5": 2100} and report["errors"] == []
    assert sum(report["image_sizes"].values()) == 2100 and report["image_sizes"]["256x256"] == 2056


def test_real_aid_check_headers(aid_dir: Path, capsys) -> None:
    code, out, _ = run(capsys, str(aid_dir), "--json", "--quick")
    report = json.loads(out)
    assert code == 0 and report["dataset"] == "aid" and report["format"] == "scene_folders"
    assert (report["images"], report["classes"], report["captions"]) == (10000, 30, 0)
    assert [w["code"] for w in report["warnings"]] == ["image-size"]  # the 150x150 copy: a warning only


def test_default_path_checks_the_embedded_sample(monkeypatch, tmp_path: Path, capsys) -> None:
    from engine.data import detect

    monkeypatch.delenv(detect.DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(detect, "_REPO_ROOT", tmp_path)
    assert detect.default_dataset_path() == detect.SAMPLE_DIR
    code, out, _ = run(capsys, "--json")
    report = json.loads(out)
    assert code == 0 and report["dataset"] == "ucm_captions"
    assert (report["images"], report["captions"], report["classes"]) == (210, 1050, 21)
    assert report["splits"] == {"train": 168, "val": 21, "test": 21}


def test_data_dir_env_overrides_and_must_exist(monkeypatch, tmp_path: Path, capsys) -> None:
    from engine.data import detect

    small_ucm(tmp_path / "mine")
    monkeypatch.setenv(detect.DATA_DIR_ENV, str(tmp_path / "mine"))
    assert detect.default_dataset_path() == (tmp_path / "mine").resolve()
    monkeypatch.setenv(detect.DATA_DIR_ENV, str(tmp_path / "typo"))
    code, _, err = run(capsys)
    assert code == 2 and error_lines(err) == [f"error: ENGINE_DATA_DIR={tmp_path / 'typo'}: no such file or folder"]
