"""Model-based foreground masks (VIR belief / attention), `engine index masks`, training with masked images,
and per-class Recall@K: each against a naive computation from its definition."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import encoders
import training  # noqa: F401  (torchvision shim)
from encoders.foreground import patch_saliency
from engine.cli import main as engine_main
from engine.evaluation.class_recall import per_class_recalls
from training_fixtures import CLASSES, write_captioned_dataset


@pytest.fixture(scope="module")
def model() -> encoders.PIRModel:
    torch.manual_seed(0)
    return encoders.create_model("tiny-test").eval()


def _pixels(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, 96, 96, generator=torch.Generator().manual_seed(1))


def test_vir_belief_saliency_is_the_belief_logit_over_patches(model) -> None:
    pixels = _pixels()
    got = patch_saliency(model, pixels, "vir-belief")
    with torch.no_grad():
        tokens = model.forward_image_tokens(pixels)
        projected = model.vision_proj(torch.cat([tokens.global_token[:, None], tokens.patch_tokens], dim=1))
        instruction = model.vir.instruction_proj(tokens.instruction_feature)
    grid = model.config.vision.token_grid
    for b in range(pixels.shape[0]):
        logits = [float(projected[b, n] @ instruction[b]) for n in range(projected.shape[1])]
        belief = logits[1:]  # the patches' belief logits (VIR's belief = their softmax with the global token's)
        low, high = min(belief), max(belief)
        expected = torch.tensor([(v - low) / (high - low) for v in belief]).reshape(grid, grid)
        torch.testing.assert_close(got[b], expected, rtol=1e-3, atol=1e-4)


def test_vir_attention_saliency_is_the_attention_each_patch_receives(model) -> None:
    pixels = _pixels(2)
    got = patch_saliency(model, pixels, "vir-attention")
    result = model.vision_attention(pixels, layer=-1)  # VIR's last self-attention, kept tokens in belief order
    grid = model.config.vision.token_grid
    for b in range(2):
        received = {int(result.token_indices[b, k]): float(result.attention[b].mean(dim=0)[:, k].sum())
                    for k in range(result.token_indices.shape[1])}
        patches = [received.get(position, 0.0) for position in range(1, 1 + grid * grid)]
        low, high = min(patches), max(patches)
        expected = torch.tensor([(v - low) / (high - low) for v in patches]).reshape(grid, grid)
        torch.testing.assert_close(got[b], expected, rtol=1e-3, atol=1e-4)


def test_grid_foreground_is_the_bright_part_upsampled() -> None:
    from indexing.foreground_masks import foreground_from_grid

    grid = torch.zeros(4, 4)
    grid[:2, 2:] = 1.0  # top-right quarter
    mask = foreground_from_grid(grid, width=40, height=20)
    assert mask.shape == (20, 40)
    assert mask[:8, 22:].all() and not mask[12:, :].any() and not mask[:, :18].any()
    assert foreground_from_grid(torch.full((4, 4), 0.3), 10, 10).all()  # no spread: keep everything


def test_engine_index_masks_writes_one_png_per_image_and_the_share_kept(tmp_path, model, capsys) -> None:
    data = write_captioned_dataset(tmp_path / "data")
    encoders.save_model(model, tmp_path / "model")
    for source in ("vir-belief", "colour"):
        out = tmp_path / f"masks-{source}"
        argv = ["index", "masks", str(data), "--out", str(out), "--source", source]
        if source != "colour":
            argv += ["--model", str(tmp_path / "model")]
        assert engine_main(argv) == 0, capsys.readouterr().err
        report = json.loads((out / "masks.json").read_text())
        pngs = sorted(out.glob("*.png"))
        assert len(pngs) == report["images"] == 21 and set(report["per_class_foreground"]) == set(CLASSES)
        fractions = [float((np.asarray(Image.open(p)) > 0).mean()) for p in pngs]
        assert report["mean_foreground"] == pytest.approx(np.mean(fractions))
        assert "% of pixels kept" in capsys.readouterr().out
    assert engine_main(["index", "masks", str(data), "--out", str(tmp_path / "x"), "--source", "edges"]) == 2
    assert "--source" in capsys.readouterr().err


def test_training_masks_only_the_training_images_and_keys_the_cache(tmp_path, capsys) -> None:
    """All-background masks + hard masking: every training image becomes black (identical cached features),
    while val images stay as they are; a run without masks gets other cache files."""
    from safetensors.torch import load_file

    data = write_captioned_dataset(tmp_path / "data")
    blank = tmp_path / "blank-masks"
    blank.mkdir()
    for path in (data / "images").glob("*.png"):
        Image.new("L", (8, 8), 0).save(blank / path.name)
    common = ["train", str(data), "--config", "tiny-test", "--epochs", "1", "--batch-size", "8", "--quiet",
              "--cached-views", "1", "--no-augment"]
    masked = [*common, "--feature-cache", str(tmp_path / "cache"), "--train-mask", "hard", "--train-masks",
              str(blank), "--out", str(tmp_path / "masked")]
    assert engine_main(masked) == 0, capsys.readouterr().err
    files = {len(load_file(str(p))["image.global_token"]): load_file(str(p))
             for p in (tmp_path / "cache").glob("features-*")}
    train, val = files[12], files[6]  # 12 train images, 6 val images
    assert torch.equal(train["image.global_token"][0], train["image.global_token"][-1])  # all black
    assert not torch.equal(val["image.global_token"][0], val["image.global_token"][-1])  # val untouched
    assert engine_main([*common, "--feature-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "plain")]) == 0
    assert len(list((tmp_path / "cache").glob("features-*"))) == 3  # a new train file; val is shared
    capsys.readouterr()
    missing = tmp_path / "missing"
    missing.mkdir()
    assert engine_main([*common, "--train-mask", "soft", "--train-mask-sigma", "0.5", "--train-masks",
                        str(missing), "--out", str(tmp_path / "bad")]) == 2
    assert "masks missing" in capsys.readouterr().err


def test_per_class_recalls_match_a_naive_count() -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(12, 5))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = ["a", "b", "c"] * 4
    got = per_class_recalls(embeddings, labels, ks=(1, 2, 4))
    for name in "abc":
        hits = {1: 0, 2: 0, 4: 0}
        queries = [i for i in range(12) if labels[i] == name]
        for i in queries:
            order = sorted((j for j in range(12) if j != i), key=lambda j: (-float(embeddings[i] @ embeddings[j]), j))
            for k in hits:
                hits[k] += any(labels[j] == name for j in order[:k])
        assert got[name] == pytest.approx({f"r{k}": 100 * hits[k] / len(queries) for k in hits})
