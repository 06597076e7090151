"""What averaging the image embedding over N dihedral views buys (val and test mR) and costs (image encoding time).

For each checkpoint, every image of a split is encoded once per view (identity, hflip, vflip, rot90, ...;
``encoders.views``), and the embedding with N views is normalise(sum of the first N): exactly what
``encode_image`` computes with ``vision.test_time_views = N`` (checked on one batch). Captions are encoded once.
The time of ``encode_image`` on one batch is measured for N = 1, 2, 4, 8 in the same run, so the ratios compare.
Pick N on val; test is reported, never used to choose.

    python -m bench.test_time_views --data ../shared/data/ucm_captions \
        --checkpoint runs/ablation-tail/m-aidtail1-seed1/best runs/ablation-tail/m-aidtail1-seed2/best \
        runs/ablation-tail/m-aidtail1-seed3/best
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from release.docs_blocks import markdown_table, update_page

REPO = Path(__file__).resolve().parents[1]

TIMED_VIEWS = (1, 2, 4, 8)
BLOCK = "test-time-views"


def split_curve(model, subset, batch_size: int) -> list[float]:
    """mR (%) of the split for N = 1..8 views."""
    import torch

    from encoders.views import VIEW_NAMES, apply_view
    from engine.data.images import load_rgb
    from engine.metrics import retrieval_recalls
    from engine.text_encoding import encode_distinct

    transform = model.image_transform(train=False)
    pixels = torch.stack([transform(load_rgb(image.path)) for image in subset.images])
    with torch.inference_mode():
        per_view = np.stack([
            np.concatenate([model.encode_image_view(apply_view(pixels[start:start + batch_size], view)).numpy()
                            for start in range(0, len(pixels), batch_size)])
            for view in range(len(VIEW_NAMES))])
        texts = encode_distinct(lambda batch: model.encode_text(batch).numpy(),
                                [caption.text for caption in subset.captions], batch_size * 4)
        _check_matches_encode_image(model, pixels[:batch_size], per_view[:, :batch_size])
    row_of = {image.image_id: row for row, image in enumerate(subset.images)}
    targets = np.array([row_of[caption.image_id] for caption in subset.captions], dtype=np.int64)
    curve = []
    for views in range(1, len(VIEW_NAMES) + 1):
        images = per_view[:views].sum(axis=0)
        images /= np.linalg.norm(images, axis=1, keepdims=True)
        curve.append(retrieval_recalls(images.astype(np.float32), texts, targets)["mR"])
    return curve


def _check_matches_encode_image(model, pixels, per_view: np.ndarray) -> None:
    """The per-view average here must be what the model's own encode_image returns with that setting."""
    original = model.config.vision.test_time_views
    try:
        for views in TIMED_VIEWS:
            model.set_test_time_views(views)
            expected = per_view[:views].sum(axis=0)
            expected /= np.linalg.norm(expected, axis=1, keepdims=True)
            difference = float(np.abs(model.encode_image(pixels).numpy() - expected).max())
            if difference > 1e-4:
                raise SystemExit(f"encode_image with {views} views differs from the per-view average by {difference}")
    finally:
        model.set_test_time_views(original)


def encode_timings(model, pixels, repeats: int) -> dict[int, float]:
    """Best-of-``repeats`` seconds of encode_image on ``pixels`` for each N in TIMED_VIEWS."""
    import torch

    original = model.config.vision.test_time_views
    timings = {}
    try:
        with torch.inference_mode():
            for views in TIMED_VIEWS:
                model.set_test_time_views(views)
                model.encode_image(pixels[:2])  # warm-up
                best = float("inf")
                for _ in range(repeats):
                    started = time.perf_counter()
                    model.encode_image(pixels)
                    best = min(best, time.perf_counter() - started)
                timings[views] = best
    finally:
        model.set_test_time_views(original)
    return timings


def render(result: dict) -> str:
    splits = result["splits"]
    headers = ["checkpoint", "split"] + [f"N={n}" for n in range(1, 9)] + ["best N on val"]
    rows = []
    for run in result["runs"]:
        best = int(np.argmax(run["mR"]["val"])) + 1 if "val" in run["mR"] else None
        for split in splits:
            values = run["mR"][split]
            rows.append([run["checkpoint"], split] + [f"{value:.2f}" for value in values]
                        + [str(best) if split == "val" and best else ""])
    for split in splits:
        curves = np.array([run["mR"][split] for run in result["runs"]])
        mean, spread = curves.mean(axis=0), curves.std(axis=0, ddof=min(1, len(curves) - 1))
        best = str(int(np.argmax(mean)) + 1) if split == "val" else ""
        rows.append([f"mean ± sd of {len(curves)}", split] + [f"{m:.2f} ± {s:.2f}" for m, s in zip(mean, spread)]
                    + [best])
    timing = result["encode_seconds"]
    base = timing["1"]
    cost = ", ".join(f"N={n}: {timing[str(n)] * 1000 / result['timed_images']:.1f} ms/image ({timing[str(n)] / base:.2f}×)"
                     for n in TIMED_VIEWS)
    return "\n".join([
        f"Measured {result['meta']['date']} on {result['meta']['machine']}, commit {result['meta']['commit']}:",
        f"`{result['meta']['command']}`", "",
        "UCM-captions mR (%) when the image embedding averages the first N dihedral views "
        "(identity, hflip, vflip, rot90, rot180, rot270, transpose, antitranspose); captions unchanged.", "",
        markdown_table(headers, rows), "",
        f"Image encoding time of `encode_image` on {result['timed_images']} images, best of {result['repeats']}, "
        f"same run: {cost}.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", nargs="+", default=[None], help="checkpoint folders (default: shipped)")
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "test_time_views.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    args = parser.parse_args()

    import torch

    import encoders
    from bench.machine import run_meta
    from engine.atomic import write_json_atomic
    from engine.data import load_dataset
    from engine.data.images import load_rgb

    dataset = load_dataset(args.data)
    runs, timings, timed = [], None, 0
    for checkpoint in args.checkpoint:
        model = encoders.load_model(checkpoint).eval()
        if timings is None:  # first, while nothing else of this script competes for the cores
            images = dataset.split(args.splits[0]).images[:args.batch_size]
            transform = model.image_transform(train=False)
            pixels = torch.stack([transform(load_rgb(image.path)) for image in images])
            timings, timed = encode_timings(model, pixels, args.repeats), len(images)
        curves = {split: split_curve(model, dataset.split(split), args.batch_size) for split in args.splits}
        runs.append({"checkpoint": checkpoint or "shipped", "fingerprint": model.fingerprint(), "mR": curves})
        print(checkpoint or "shipped", {split: [round(v, 2) for v in curve] for split, curve in curves.items()},
              flush=True)
    result = {"meta": run_meta(REPO), "splits": args.splits, "runs": runs, "timed_images": timed,
              "repeats": args.repeats, "encode_seconds": {str(n): seconds for n, seconds in timings.items()}}
    write_json_atomic(args.out, result, indent=1)
    update_page(args.docs, BLOCK, render(result))
    print(render(result))


if __name__ == "__main__":
    main()
