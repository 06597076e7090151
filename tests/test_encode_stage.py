"""The shared encode stage (encoders.encode_stage): bit-identical to a naive per-file loop, and training's
validation scores exactly what `engine eval` scores on the same split with the same model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from training_fixtures import write_captioned_dataset


def _model():
    import torch

    import encoders

    torch.manual_seed(0)
    return encoders.create_model("tiny-test").eval()


def test_stage_equals_a_naive_loop_over_the_files(tmp_path: Path) -> None:
    import torch

    from encoders.encode_stage import encode_captions, encode_image_files
    from engine.data import load_dataset
    from engine.data.images import load_rgb

    dataset = load_dataset(write_captioned_dataset(tmp_path / "data"))
    model = _model()
    paths = [image.path for image in dataset.images]
    transform = model.image_transform(train=False)
    with torch.no_grad():
        naive = np.concatenate([model.encode_image(torch.stack([transform(load_rgb(p)) for p in paths[i:i + 4]]))
                                .float().numpy() for i in range(0, len(paths), 4)])
        texts = [caption.text for caption in dataset.captions]
        naive_texts = model.encode_text(texts).float().numpy()
    seen = []
    staged = encode_image_files(model, paths, 4, 0, torch.device("cpu"), seen.append)
    assert staged.dtype == np.float32 and np.array_equal(staged, naive) and sum(seen) == len(paths)
    np.testing.assert_allclose(encode_captions(model, texts, 5), naive_texts, atol=1e-6)


def test_training_validation_scores_what_engine_eval_scores(tmp_path: Path) -> None:
    import torch

    from engine.data import load_dataset
    from engine.evaluation.embed import embed_split
    from engine.metrics import retrieval_recalls
    from training.evaluate import evaluate_files
    from training.pairs import build_pairs

    dataset = load_dataset(write_captioned_dataset(tmp_path / "data", per_class=(1, 4, 1)))
    model = _model()
    ks = (1, 5, 10)
    training = evaluate_files(model, build_pairs(dataset, "val"), 4, torch.device("cpu"), ks)
    split = embed_split(model, dataset.split("val"), batch_size=4, device="cpu", show_progress=False)
    assert training == retrieval_recalls(split.images, split.texts, split.text_to_image, ks=ks)
