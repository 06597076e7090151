"""Zero-shot scene classification: the metric against a naive reference, the CLI, its bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli import main as engine_main
from engine.evaluation.zero_shot import zero_shot_metrics
from training_fixtures import write_captioned_dataset, write_scene_folders


def _naive(images, classes, labels, k):
    hits = 0
    for image, label in zip(images, labels):
        scores = [float(np.dot(image, c)) for c in classes]
        # descending score, ties by class order
        order = sorted(range(len(classes)), key=lambda j: (-scores[j], j))
        hits += label in order[:k]
    return 100.0 * hits / len(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_matches_a_naive_loop(seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(200, 16)).astype(np.float32)
    classes = rng.normal(size=(12, 16)).astype(np.float32)
    classes[5] = classes[4]  # a tie between two classes: class order decides
    labels = rng.integers(0, 12, size=200)
    names = [f"c{i}" for i in range(12)]
    result = zero_shot_metrics(images, classes, labels, names)
    assert result["accuracy"]["top1"] == pytest.approx(_naive(images, classes, labels, 1))
    assert result["accuracy"]["top5"] == pytest.approx(_naive(images, classes, labels, 5))
    confusion = np.array(result["confusion"]["rows_true_columns_predicted"])
    assert confusion.sum() == 200 and (confusion[:, 5] == 0).all()  # 5 always loses its tie to 4
    for index, row in enumerate(result["per_class"]):
        mine = labels == index
        assert row["images"] == int(mine.sum())
        assert row["top1"] == pytest.approx(_naive(images[mine], classes, labels[mine], 1))
        assert confusion[index].sum() == row["images"]
    assert result["accuracy"]["mean_class_top1"] == pytest.approx(np.mean([r["top1"] for r in result["per_class"]]))


def test_perfect_embeddings_score_100_and_a_class_without_images_is_skipped_in_the_mean():
    classes = np.eye(4, dtype=np.float32)
    labels = np.array([0, 1, 1, 2])
    result = zero_shot_metrics(classes[labels], classes, labels, ["a", "b", "c", "d"])
    assert result["accuracy"] == {"top1": 100.0, "top5": 100.0, "mean_class_top1": 100.0}
    assert result["per_class"][3]["images"] == 0 and result["per_class"][3]["top1"] is None


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny-test checkpoint (untrained heads): fast, and enough to run the command end to end."""
    import encoders
    from encoders.model_config import load_config

    folder = tmp_path_factory.mktemp("tiny-model")
    encoders.save_model(encoders.create_model(load_config("tiny-test")), folder)
    return folder


def test_cli_writes_the_result_the_plot_and_compares(tmp_path, tiny_model, capsys):
    data = write_scene_folders(tmp_path / "scenes", per_class=5)
    out, plot = tmp_path / "zs.json", tmp_path / "zs.png"
    assert engine_main(["eval", str(data), "--zero-shot", "--model", str(tiny_model), "--out", str(out),
                        "--plot", str(plot), "--label", "tiny"]) == 0
    result = json.loads(out.read_text())
    assert result["format"] == "engine-eval-zeroshot/1"
    # a folder the model never trained on: every image, and the command says so
    assert result["dataset"]["images"] == 15 and result["dataset"]["classes"] == 3
    assert "note: 15 images: every image (the model's training record does not name scenes)" in \
        capsys.readouterr().err
    assert plot.stat().st_size > 1000
    assert engine_main(["eval", str(data), "--zero-shot", "--split", "test", "--model", str(tiny_model),
                        "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"]["images"] == 3  # the held-out part: 1 per class
    assert engine_main(["eval", "--compare", str(out), str(out)]) == 0
    assert "zero-shot comparison" in capsys.readouterr().out


def test_a_collection_the_model_trained_on_is_scored_on_its_held_out_part(tmp_path, capsys):
    import encoders
    from engine.data import load_dataset

    data = write_scene_folders(tmp_path / "scenes", per_class=5)
    copy = write_scene_folders(tmp_path / "elsewhere" / "scenes", per_class=5)  # the same listing, another folder
    record = {**load_dataset(data).identity(), "part": "train part of the stratified split (0.8, seed 42)"}
    model = tmp_path / "model"
    encoders.save_model(encoders.create_model("tiny-test"), model, trained_on=[record])
    assert encoders.checkpoint.training_provenance(model) == [record]
    for folder in (data, copy):
        assert engine_main(["eval", str(folder), "--zero-shot", "--model", str(model), "--json"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["dataset"]["images"] == 3
        assert "3 images: held-out part of the stratified split" in captured.err
        assert "(the model trained on the train part of the stratified split (0.8, seed 42) of scenes)" in captured.err
    other = write_scene_folders(tmp_path / "other", per_class=4)
    assert engine_main(["eval", str(other), "--zero-shot", "--model", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"]["images"] == 12


def test_held_out_part_is_the_instruction_encoders(tmp_path, tiny_model):
    from engine.data import load_dataset
    from engine.data.splits import split_part, stratified_split

    data = write_scene_folders(tmp_path / "scenes", per_class=10)
    dataset = load_dataset(data)
    _, held_out = stratified_split(dataset)
    assert [image.image_id for image in split_part(dataset, "test").images] == \
        [dataset.images[p].image_id for p in held_out]


def test_bad_inputs_give_one_error_line(tmp_path, tiny_model, capsys):
    one_class = tmp_path / "one"
    write_scene_folders(tmp_path / "full", per_class=3)
    (one_class).mkdir()
    (tmp_path / "full" / "Forest").rename(one_class / "Forest")
    unlabelled = write_captioned_dataset(tmp_path / "nolabels", with_class=False)
    cases = [
        ([str(one_class)], "only one class"),
        ([str(unlabelled)], "no scene class"),
        ([str(tmp_path / "full"), "--split", "val"], "held-out part"),
        ([str(tmp_path / "missing")], "no such file or folder"),
    ]
    for args, message in cases:
        code = engine_main(["eval", *args, "--zero-shot", "--model", str(tiny_model)])
        err = capsys.readouterr().err
        assert code != 0 and message in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1


def test_intervals_ranks_and_a_paired_compare(tmp_path, tiny_model, capsys):
    from engine.evaluation.report import decode_class_ranks, encode_class_ranks

    data = write_scene_folders(tmp_path / "scenes", per_class=8)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert engine_main(["eval", str(data), "--zero-shot", "--model", str(tiny_model), "--out", str(first),
                        "--bootstrap", "200", "--label", "tiny"]) == 0
    output = capsys.readouterr().out
    assert "95% intervals: top-1 " in output and "200 draws of the split's images" in output
    result = json.loads(first.read_text())
    ranks, labels = decode_class_ranks(first, result)
    assert ranks.size == labels.size == 24 and result["accuracy"]["top1"] == pytest.approx((ranks == 0).mean() * 100)
    low, high = result["accuracy_interval"]["bounds"]["top1"]
    assert low <= result["accuracy"]["top1"] <= high
    # fixed ranks for both files (the untrained tiny model's own accuracy varies from run to run: with few wrong
    # images the gain could be too small to clear zero): half the images wrong, then every second of those right
    ranks = np.where(np.arange(ranks.size) % 2 == 0, 1, 0)
    result.update(ranks=encode_class_ranks(ranks, labels), accuracy={**result["accuracy"], "top1": 50.0})
    first.write_text(json.dumps(result))
    # a second run that gets every second wrong image right: paired on the same images, the gain is seen as such
    better = ranks.copy()
    better[np.flatnonzero(ranks > 0)[::2]] = 0
    result.update(ranks=encode_class_ranks(better, labels), settings={"label": "better"},
                  accuracy={**result["accuracy"], "top1": float((better == 0).mean() * 100)})
    second.write_text(json.dumps(result))
    gain = round(float((better == 0).mean() - (ranks == 0).mean()) * 100, 2)
    assert engine_main(["eval", "--compare", str(first), str(second)]) == 0
    output = capsys.readouterr().out
    assert f"better − tiny: top-1 {gain:+.2f}, paired 95% interval" in output and "of the 24 images" in output
    assert "top-1 95% interval" in output  # the table's interval column
    other = tmp_path / "c.json"  # other images (their labels differ): shown, not paired
    result.update(ranks=encode_class_ranks(better, labels[::-1].copy()), settings={"label": "other"})
    other.write_text(json.dumps(result))
    assert engine_main(["eval", "--compare", str(first), str(other)]) == 0
    assert "other: not paired with tiny (another split, other labels or classes)" in capsys.readouterr().out
    assert engine_main(["eval", "--compare", str(first), str(second), "--json"]) == 0
    paired = json.loads(capsys.readouterr().out)["paired differences"]
    assert paired[0]["run"] == "better" and paired[0]["top1"] == gain and paired[0]["bounds"][0] > 0
    # without --bootstrap draws: no interval, the ranks are still kept
    assert engine_main(["eval", str(data), "--zero-shot", "--model", str(tiny_model), "--out", str(first),
                        "--bootstrap", "0"]) == 0
    assert "95% intervals:" not in capsys.readouterr().out
    assert json.loads(first.read_text())["accuracy_interval"] == {} and json.loads(first.read_text())["ranks"]


@pytest.mark.parametrize("damage", ["ranks", "labels", "interval", "accuracy", "bootstrap"])
def test_bad_zero_shot_result_files_and_flags_give_one_line(tmp_path, tiny_model, capsys, damage):
    data = write_scene_folders(tmp_path / "scenes", per_class=4)
    path = tmp_path / "zs.json"
    assert engine_main(["eval", str(data), "--zero-shot", "--model", str(tiny_model), "--out", str(path),
                        "--bootstrap", "20"]) == 0
    capsys.readouterr()
    result = json.loads(path.read_text())
    if damage == "ranks":
        result["ranks"]["true_class_rank"] = "not base64!"
    elif damage == "labels":
        from engine.evaluation.report import encode_class_ranks

        result["ranks"] = encode_class_ranks(np.zeros(12, int), np.full(12, 7))  # class 7 of 3
    elif damage == "interval":
        result["accuracy_interval"] = {"level": 95, "bounds": {"top1": [1.0]}}
    elif damage == "accuracy":
        del result["accuracy"]["top5"]
    path.write_text(json.dumps(result))
    args = (["eval", str(data), "--zero-shot", "--model", str(tiny_model), "--bootstrap", "-1"]
            if damage == "bootstrap" else ["eval", "--compare", str(path), str(path)])
    assert engine_main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    expected = {"ranks": "zs.json: field ranks must be", "labels": "zs.json: field ranks does not fit",
                "interval": "zs.json: field accuracy_interval", "accuracy": "zs.json: field accuracy lacks top5",
                "bootstrap": "--bootstrap must be 0"}[damage]
    assert len(error) == 1 and error[0].startswith("error:") and expected in error[0], error
