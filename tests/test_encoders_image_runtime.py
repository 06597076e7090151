"""Compiled image and caption encoders for indexing (encoders.image_runtime, encoders.batch_text): kept only when
they match eager float32 to cosine 0.9999."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoders.image_runtime import KINDS, MIN_COSINE, best_image_runtime, build_image_runtime, probe_pixels


@pytest.fixture(scope="module")
def tiny():
    import encoders

    torch.manual_seed(0)
    model = encoders.create_model("tiny-test").eval()
    model.set_test_time_views(2)  # the runtime must average views exactly as the model does
    return model


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_every_runtime_matches_eager_float32(tiny, kind) -> None:
    runtime = build_image_runtime(tiny, kind)
    assert runtime is not None, f"{kind} could not be built"
    pixels = probe_pixels(tiny, count=5, seed=7)  # other images than the build-time probes, another batch size
    with torch.inference_mode():
        expected = tiny.encode_image(pixels)
        got = runtime.encode_image(pixels)
    assert got.shape == expected.shape
    assert _cosines(got, expected).min() >= MIN_COSINE
    if kind != "eager":
        assert runtime.fidelity is not None and runtime.fidelity.min_cosine >= MIN_COSINE


def test_an_unfaithful_runtime_is_refused_and_auto_falls_back(tiny, monkeypatch) -> None:
    from encoders import image_runtime

    def perturbed(model, kind, probes, threads, refresh=False):  # a "compiled" encoder that is slightly off
        return image_runtime.ImageRuntime(model, kind, lambda pixels: torch.nn.functional.normalize(
            model.encode_image_view(pixels) + 0.05 * torch.randn(len(pixels), model.config.embed_dim), dim=-1))

    monkeypatch.setattr(image_runtime, "_build", perturbed)
    assert build_image_runtime(tiny, "onnx") is None
    assert best_image_runtime(tiny, "auto").kind == "eager"
    assert best_image_runtime(tiny, "channels_last").kind == "eager"


def test_indexing_with_onnx_runtime_stores_embeddings_equal_to_eager(tmp_path) -> None:
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq

    sys.path.insert(0, str(Path(__file__).parent))
    import indexing_fakes

    from indexing.build import IndexOptions, run_index

    pytest.importorskip("faiss")
    indexing_fakes.write_karpathy(tmp_path / "ds", 6, captions_per_image=1)
    vectors = {}
    for kind in ("eager", "onnx"):
        summary = run_index(IndexOptions(data_dir=tmp_path / "ds", out=tmp_path / kind, model_spec="tiny-test",
                                         workers=0, batch_size=5, image_runtime=kind, text_runtime=kind))
        assert summary.image_runtime.startswith(kind) and summary.text_runtime.startswith(kind)
        vectors[kind] = [np.asarray(pq.read_table(tmp_path / kind / folder).column("embedding").to_pylist(),
                                    np.float32) for folder in ("shards", "text_shards")]
    for eager, onnx in zip(vectors["eager"], vectors["onnx"]):
        assert (np.sum(eager * onnx, axis=1)).min() >= MIN_COSINE


def test_shipped_model_onnx_runtime_matches_eager_on_real_tiles(ucm_dir) -> None:
    from engine.data.images import load_rgb
    from indexing.encode import load_encoder

    model = load_encoder(None, torch.device("cpu"))
    model.set_test_time_views(1)
    runtime = build_image_runtime(model, "onnx")
    assert runtime is not None, "the shipped model's ONNX backbone was refused or failed to export"
    transform = model.image_transform(train=False)
    paths = sorted((ucm_dir / "images").glob("*.jpg"))[::300][:7]
    pixels = torch.stack([transform(load_rgb(path)) for path in paths])
    with torch.inference_mode():
        cosines = _cosines(runtime.encode_image(pixels), model.encode_image(pixels))
    assert cosines.min() >= MIN_COSINE


def test_onnx_caption_encoder_matches_eager_on_padded_batches(tiny, monkeypatch) -> None:
    from encoders import batch_text

    encoder = batch_text.build_batch_text_encoder(tiny, "onnx")
    assert encoder is not None and encoder.kind == "onnx" and encoder.min_cosine >= batch_text.MIN_COSINE
    texts = ["a farm", "two rivers meet beside a long bridge with cars", "harbor", "dense houses " * 9]
    with torch.inference_mode():
        assert _cosines(encoder(texts), tiny.encode_text(texts)).min() >= batch_text.MIN_COSINE
    monkeypatch.setattr(batch_text, "MAX_DIFFERENCE", -1.0)  # nothing can pass: the builder must refuse
    assert batch_text.build_batch_text_encoder(tiny, "onnx") is None
