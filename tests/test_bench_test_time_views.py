"""bench/test_time_views.py at toy scale: N=1 is engine eval's number, each N is what encode_image computes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not an installed package
sys.path.insert(0, str(Path(__file__).parent))

from bench import test_time_views as bench
from query_fixtures import write_dataset


def test_curve_starts_at_engine_eval_and_is_checked_against_encode_image(tmp_path: Path) -> None:
    import torch
    from PIL import Image

    import encoders
    from engine.data import load_dataset
    from engine.evaluation.embed import embed_split
    from engine.metrics import retrieval_recalls

    write_dataset(tmp_path / "data")
    torch.manual_seed(0)
    model = encoders.create_model("tiny-test").eval()
    subset = load_dataset(tmp_path / "data").split("train")
    curve = bench.split_curve(model, subset, batch_size=3)  # raises if a per-view average is not encode_image's
    assert len(curve) == 8 and model.config.vision.test_time_views == 1
    single = embed_split(model, subset, show_progress=False)
    assert curve[0] == pytest.approx(retrieval_recalls(single.images, single.texts, single.text_to_image)["mR"])
    model.set_test_time_views(8)
    full = embed_split(model, subset, show_progress=False)
    assert curve[7] == pytest.approx(retrieval_recalls(full.images, full.texts, full.text_to_image)["mR"])
    blank = model.image_transform()(Image.new("RGB", (64, 64)))
    timings = bench.encode_timings(model, torch.stack([blank, blank]), repeats=1)
    assert list(timings) == list(bench.TIMED_VIEWS) and model.config.vision.test_time_views == 8
    result = {"meta": {"date": "d", "machine": "m", "commit": "c", "command": "x"}, "splits": ["train"],
              "runs": [{"checkpoint": "tiny", "mR": {"train": curve}}], "timed_images": 2, "repeats": 1,
              "encode_seconds": {str(n): s for n, s in timings.items()}}
    text = bench.render(result)
    assert "| tiny | train |" in text and "N=8:" in text
