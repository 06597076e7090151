"""Training on a mix of datasets (training.mix, training.mix_data): mix files, class merging, held-out images,
bad inputs, and end-to-end CLI runs with the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import training  # noqa: F401
from engine.cli import main as engine_main
from engine.data import load_dataset
from engine.data.splits import stratified_split
from engine.errors import EngineError
from training.mix import CAPTIONS, SCENES, MixSpec, load_mix, mix_from_arguments, read_mix_file
from training.mix_data import collate_mixed_cached, offset_pairs, source_pairs
from training_fixtures import write_captioned_dataset, write_scene_folders

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mix")
    return {"captions": write_captioned_dataset(root / "cap"), "scenes": write_scene_folders(root / "scn", per_class=6)}


def _mix(*entries, **extra) -> MixSpec:
    return MixSpec.from_dict({"datasets": list(entries), **extra}, "test-mix")


def test_a_caption_dataset_and_a_scene_collection_make_one_mix(data):
    mix = load_mix(_mix(str(data["captions"]), {"path": str(data["scenes"]), "weight": 0.5}), use_affiliation=True)
    captions, scenes = mix.sources
    assert (captions.kind, scenes.kind) == (CAPTIONS, SCENES)
    assert mix.primary == 0 and mix.class_names == ["farmland", "forest", "harbor"]
    assert {image.split for image in captions.train.images} == {"train"}
    # the scene collection trains on the train part of the instruction encoder's split, 5 captions an image
    dataset = load_dataset(data["scenes"])
    train, held_out = stratified_split(dataset)
    assert scenes.train_positions == train and len(scenes.evaluation) == len(held_out)
    assert len(scenes.train.captions) == 5 * len(train)
    assert {image.label for image in scenes.train.images} == set(mix.class_names)  # global spelling
    merged = [note for note in mix.notes if "one class across datasets" in note]
    assert len(merged) == 3 and "cap 'forest' + scn 'Forest'" in " ".join(merged)


def test_pairs_of_different_datasets_never_share_an_image_id_and_scene_captions_are_stored_once(data):
    mix = load_mix(_mix(str(data["captions"]), str(data["scenes"])), use_affiliation=True)
    sets = offset_pairs([source_pairs(source, mix.class_names) for source in mix.sources])
    ids = [{pair.image_id for pair in pairs.pairs} for pairs in sets]
    assert not ids[0] & ids[1]
    groups = [{pair.caption_group for pair in pairs.pairs} for pairs in sets]
    assert not groups[0] & groups[1]
    scenes = sets[1]
    assert len(scenes.texts) == len(set(scenes.texts)) < len(scenes.pairs)
    # all captions of a scene class form one caption group; class ids are global
    for pair in scenes.pairs:
        assert scenes.class_names[pair.class_id] == mix.sources[1].train.image(
            pair.image_id - max(sets[0].image_ids) - 1).label
    by_group = {}
    for pair in scenes.pairs:
        by_group.setdefault(pair.caption_group, set()).add(pair.class_id)
    assert all(len(classes) == 1 for classes in by_group.values()) and len(by_group) == 3


def test_rename_keeps_same_spelled_classes_apart(data):
    mix = load_mix(_mix(str(data["captions"]), {"path": str(data["scenes"]), "rename": {"Forest": "woodland"}}),
                   use_affiliation=True)
    assert mix.class_names == ["farmland", "forest", "harbor", "woodland"]
    assert sum("one class across datasets" in note for note in mix.notes) == 2


def test_training_images_that_copy_an_evaluation_image_are_left_out(data, tmp_path):
    scenes = tmp_path / "scn"
    shutil.copytree(data["scenes"], scenes)
    dataset = load_dataset(data["captions"])
    val_image = next(image for image in dataset.images if image.split == "val")
    # put the val image into the scene collection as many files, so some land in its train part
    for n in range(4):
        shutil.copy(val_image.path, scenes / "Forest" / f"forest_{100 + n}.jpg")
    mix = load_mix(_mix(str(data["captions"]), str(scenes)), use_affiliation=True)
    warning = [note for note in mix.notes if "near-duplicates of evaluation images" in note]
    assert warning and warning[0].startswith("warning:")
    digest = val_image.path.read_bytes()
    assert all(image.path.read_bytes() != digest for image in mix.sources[1].train.images)
    assert len(mix.sources[1].train.captions) == 5 * len(mix.sources[1].train.images)


def test_mix_files_in_json_and_yaml_resolve_paths_next_to_them(data, tmp_path):
    folder = tmp_path / "mixes"
    folder.mkdir()
    rel = Path("..") / ".." / data["captions"].parent.name
    (folder / "m.json").write_text(json.dumps({"datasets": [str(data["captions"]), {
        "path": str(data["scenes"]), "weight": 0.5, "captions_per_image": 3}], "epoch_pairs": 50}))
    (folder / "m.yaml").write_text(f"datasets:\n  - path: {data['captions']}\n  - path: {data['scenes']}\n"
                                   "    weight: 0.5\n    captions_per_image: 3\nepoch_pairs: 50\n")
    assert read_mix_file(folder / "m.json") == read_mix_file(folder / "m.yaml")
    (folder / "rel.json").write_text(json.dumps({"datasets": [str(rel / "cap")]}))
    assert Path(read_mix_file(folder / "rel.json").datasets[0].path) == folder / rel / "cap"
    assert mix_from_arguments([data["captions"]], None) is None  # one plain dataset: the single-dataset path
    spec = mix_from_arguments([data["captions"], data["scenes"]], [1.0, 0.25])
    assert [entry.weight for entry in spec.datasets] == [1.0, 0.25]


def _one_error_line(capsys, args: list[str], message: str) -> None:
    code = engine_main(args)
    err = capsys.readouterr().err
    assert code != 0, err
    assert "Traceback" not in err and message in err, err
    assert len([line for line in err.strip().splitlines() if line.startswith("error:")]) == 1, err


def test_bad_mixes_give_one_error_line(data, tmp_path, capsys):
    one_class = tmp_path / "one"
    (one_class / "Forest").mkdir(parents=True)
    for path in sorted((data["scenes"] / "Forest").iterdir()):
        shutil.copy(path, one_class / "Forest" / path.name)
    unlabelled = write_captioned_dataset(tmp_path / "nolabels", with_class=False)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps({"datasets": [str(data["captions"]), {"path": str(data["scenes"]), "wieght": 2}]}))
    twice = tmp_path / "twice.yaml"
    twice.write_text(f"datasets: [{data['captions']}, {data['captions']}]\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("datasets: [a, b\n")
    base = ["train", "--config", "tiny-test", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "r")]
    cap, scn = str(data["captions"]), str(data["scenes"])
    _one_error_line(capsys, base[:1] + [cap, str(tmp_path / "missing")] + base[1:], "no such file or folder")
    _one_error_line(capsys, base[:1] + [cap, str(one_class)] + base[1:], "only one class")
    _one_error_line(capsys, base[:1] + [cap, str(unlabelled)] + base[1:], "--no-affiliation")
    _one_error_line(capsys, base[:1] + [scn] + base[1:] + ["--weights", "1"], "no caption dataset with a val split")
    _one_error_line(capsys, base[:1] + [cap, scn] + base[1:] + ["--weights", "1"], "2 datasets")
    _one_error_line(capsys, base[:1] + [cap, scn] + base[1:] + ["--weights", "1,0"], "must be > 0")
    _one_error_line(capsys, base[:1] + [str(bad_json)] + base[1:], "unknown fields ['wieght']")
    _one_error_line(capsys, base[:1] + [str(twice)] + base[1:], "repeats datasets[0]")
    _one_error_line(capsys, base[:1] + [str(broken)] + base[1:], "malformed YAML")
    _one_error_line(capsys, base[:1] + [cap, str(bad_json)] + base[1:], "must be the only DATA")


def test_an_empty_class_folder_is_a_warning(data, tmp_path):
    scenes = tmp_path / "scn"
    shutil.copytree(data["scenes"], scenes)
    (scenes / "Desert").mkdir()
    mix = load_mix(_mix(str(data["captions"]), str(scenes)), use_affiliation=True)
    assert any(note.startswith("warning:") and "Desert" in note for note in mix.notes)


def test_unlabelled_caption_dataset_trains_without_affiliation(data, tmp_path):
    unlabelled = write_captioned_dataset(tmp_path / "nolabels", with_class=False)
    with pytest.raises(EngineError, match="affiliation"):
        load_mix(_mix(str(data["captions"]), str(unlabelled)), use_affiliation=True)
    assert len(load_mix(_mix(str(data["captions"]), str(unlabelled)), use_affiliation=False).sources) == 2


def test_collate_pads_captions_of_different_caches():
    image = {"trunk": torch.zeros(2, 2)}
    short = {"trunk_hidden": torch.ones(3, 4), "mask": torch.ones(3, dtype=torch.long)}
    long = {"trunk_hidden": torch.ones(5, 4), "mask": torch.ones(5, dtype=torch.long)}
    batch = collate_mixed_cached([(image, short, 0, 1, 2), (image, long, 1, 1, 3)])
    assert batch["text_inputs"]["trunk_hidden"].shape == (2, 5, 4)
    assert batch["text_inputs"]["mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["text_inputs"]["trunk_hidden"][0, 3:].abs().sum() == 0


def test_cli_trains_on_a_mix_with_cached_features_and_resumes(data, tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["train", str(data["captions"]), str(data["scenes"]), "--weights", "1,0.5", "--config", "tiny-test",
            "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--feature-cache", str(cache), "--out", str(out),
            "--quiet", "--same-caption-positives", "--seed", "5"]
    assert engine_main(args + ["--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert "mix: 2 datasets, 54 training pairs per epoch, 3 scene classes; val: cap" in err
    assert "weight 0.5 -> 18 pairs per epoch" in err
    config = json.loads((out / "train_config.json").read_text())
    assert [Path(d["path"]).name for d in config["mix"]["datasets"]] == ["cap", "scn"]
    assert json.loads((out / "mix.json").read_text())["classes"] == ["farmland", "forest", "harbor"]
    assert engine_main(args + ["--resume", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    # a resumed run must keep its mix
    from training.train_config import TrainConfig

    saved = TrainConfig.load(out / "train_config.json")
    changed = TrainConfig(**{**json.loads(saved.to_json()), "mix": {**saved.mix, "epoch_pairs": 10}})
    assert [m for m in changed.resume_mismatches(saved) if m.startswith("mix")]


@pytest.mark.parametrize("leak", [False, True])
def test_scene_trunk_maps_are_shared_with_train_instruction(data, tmp_path, monkeypatch, leak):
    """With --unfreeze-last, the scene collection's trunk maps come from train-instruction's cache file, also when
    the mix leaves out training images that copy an evaluation image (train-instruction cached them all)."""
    import dataclasses

    from encoders.model_config import load_config
    from training import instruction_tail
    from training_fixtures import CLASSES

    config = json.loads(json.dumps(dataclasses.asdict(load_config("tiny-test"))))
    config["name"] = "tiny-shared"
    config["instruction"].update(feature="logits", share_vision_backbone=True, num_classes=len(CLASSES))
    config_path = tmp_path / "tiny-shared.json"
    config_path.write_text(json.dumps(config))
    cache = tmp_path / "cache"
    scenes = tmp_path / "scn"
    shutil.copytree(data["scenes"], scenes)
    if leak:  # copies of a val image of the caption dataset: some land in the scene collection's train part
        val_image = next(image for image in load_dataset(data["captions"]).images if image.split == "val")
        for n in range(4):
            shutil.copy(val_image.path, scenes / "Forest" / f"forest_{100 + n}.jpg")
    data = {**data, "scenes": scenes}
    assert engine_main(["train-instruction", str(data["scenes"]), "--config", str(config_path), "--out",
                        str(tmp_path / "instr"), "--epochs", "1", "--views", "2", "--unfreeze-last", "1",
                        "--feature-cache", str(cache), "--quiet"]) == 0
    before = set(cache.glob("trunk-*.safetensors"))

    def no_trunk_pass(*args, **kwargs):
        raise AssertionError("the scene trunk maps should have come from the cache")

    original = instruction_tail.cached_trunks
    calls = []

    def only_from_file(*args, **kwargs):
        calls.append(args[3])  # views
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("encoders.split.network_trunk", no_trunk_pass)
            return original(*args, **kwargs)

    monkeypatch.setattr(instruction_tail, "cached_trunks", only_from_file)
    assert engine_main(["train", str(data["captions"]), str(data["scenes"]), "--config", str(config_path),
                        "--instruction-weights", str(tmp_path / "instr" / "instruction.safetensors"),
                        "--unfreeze-last", "1", "--cached-views", "2", "--feature-cache", str(cache), "--epochs", "1",
                        "--batch-size", "8", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert calls == [2]
    assert set(cache.glob("trunk-*.safetensors")) == before
    dropped = json.loads((tmp_path / "run" / "mix.json").read_text())["notes"]
    assert any("near-duplicates of evaluation images" in note for note in dropped) == leak


def _precomp_copy(source: Path, target: Path, numeric: int = 0) -> Path:
    """The captioned fixture rewritten in the precomp layout (train+val merged, as published); the first
    ``numeric`` training images renamed to class-less numeric names, as RSICD has 921 of."""
    dataset = load_dataset(source)
    by_image = dataset.captions_by_image()
    (target / "imgs").mkdir(parents=True)
    lines = {"train": ([], []), "test": ([], [])}
    renamed = 0
    for image in dataset.images:
        split = "test" if image.split == "test" else "train"
        name = f"{image.label}_{image.image_id}.png"
        if split == "train" and renamed < numeric:
            name, renamed = f"{90000 + image.image_id}.png", renamed + 1
        shutil.copy(image.path, target / "imgs" / name)
        for caption in by_image[image.image_id]:
            lines[split][0].append(caption.text)
            lines[split][1].append(name)
    for split, (captions, names) in lines.items():
        (target / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
        (target / f"{split}_filename.txt").write_text("\n".join(names) + "\n")
    return target


def test_partly_unlabelled_caption_dataset_keeps_the_affiliation_loss_for_the_rest(data, tmp_path):
    precomp = _precomp_copy(data["captions"], tmp_path / "pre", numeric=2)
    mix = load_mix(_mix(str(data["captions"]), {"path": str(precomp), "images": str(precomp / "imgs")}),
                   use_affiliation=True)
    assert any("2 of" in note and "affiliation loss leaves them out" in note for note in mix.notes)
    assert any("no val split" in note for note in mix.notes)


def test_repeated_captions_once_keeps_rows_and_drops_repeats():
    from training.pairs import Pair, PairSet, without_repeated_captions

    pairs = PairSet([Pair(0, 0, 0, 0, 7), Pair(0, 0, 1, 0, 7), Pair(0, 0, 2, 0, 8), Pair(1, 1, 3, 0, 7)],
                    [0, 1], ["a", "b"], ["x .", "x", "y", "x ."], [0, 0, 0, 1], ["c"])
    once = without_repeated_captions(pairs)
    assert [(p.image_id, p.caption_row) for p in once.pairs] == [(0, 0), (0, 2), (1, 3)]
    assert once.texts == pairs.texts and once.image_paths == pairs.image_paths  # the same feature cache serves it


def test_every_val_split_of_a_mix_is_scored_and_their_mean_chooses(data, tmp_path, capsys):
    precomp = _precomp_copy(data["captions"], tmp_path / "pre")
    mix_file = tmp_path / "mix.yaml"
    mix_file.write_text(f"datasets:\n  - path: {precomp}\n    images: {precomp / 'imgs'}\n"
                        f"  - path: {data['captions']}\n  - path: {data['scenes']}\n    weight: 0.5\n")
    out = tmp_path / "run"
    args = ["train", str(mix_file), "--config", "tiny-test", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3",
            "--feature-cache", str(tmp_path / "cache"), "--out", str(out), "--quiet", "--seed", "3",
            "--repeated-captions", "once"]
    assert engine_main(args) == 0
    err = capsys.readouterr().err
    assert "val: pre + cap (their mean mR chooses the epoch)" in err
    val = json.loads((out / "history.json").read_text())[0]["val"]
    assert val["mR"] == pytest.approx((val["pre:mR"] + val["cap:mR"]) / 2)
    assert json.loads((out / "mix.json").read_text())["val"] == ["pre", "cap"]
    assert json.loads((out / "best" / "metrics.json").read_text())["mR"] == val["mR"]
