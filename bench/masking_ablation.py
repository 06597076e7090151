"""Background-masking ablation: none vs soft σ=0.2 vs soft σ=0.5 vs hard on one labelled split (UCM test).

For every mode the split's images are encoded through indexing's own masking path (``indexing.encode.ImageItems``:
mask on the 8-bit RGB image, then the model's transform), with the built-in foreground estimate of
``engine.data.masking`` (UCM ships no masks). Captions are encoded once (masking touches images only). Reported:
image→image Recall@1/2/4/8 by class (query = each image, gallery = the other images of the split, hit = same
class; :mod:`engine.evaluation.class_recall`) and text↔image R@1/5/10 + mR (:mod:`engine.metrics`).
Raw results go to ``docs/bench/masking.json``; the ``masking`` block of docs/ablations.md is rendered from them.

    python -m bench.masking_ablation --data ../shared/data/ucm_captions [--checkpoint MODEL_DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.ablation_results import write_ablation_results
from release.docs_blocks import markdown_table, update_page
from bench.machine import run_meta
from engine.atomic import write_json_atomic
from engine.errors import EngineError

REPO = Path(__file__).resolve().parents[1]

MODES = (("none", "none", None), ("soft σ=0.2", "soft", 0.2), ("soft σ=0.5", "soft", 0.5), ("hard", "hard", None))
TEXT_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "mR")
DEFAULT_BATCH = 32


def encode_masked(model, subset, mode: str, sigma: float | None, batch_size: int, device, masks: Path | None = None):
    """(n, D) embeddings of the split's images under one mask mode, via the indexing encoder path."""
    import numpy as np

    from indexing.encode import ImageItems, PlannedImage, encode_pixels, image_loader
    from engine.data.masking import mask_options

    planned = [PlannedImage(image_id=image.image_id, source_id=image.image_id, path=image.path,
                            rel_path=image.relative_path(subset.root), split=image.split, label=image.label)
               for image in subset.images]
    items = ImageItems(planned, model.image_transform(train=False),
                       mask_options(mode, sigma, masks if mode != "none" else None))
    parts = []
    for batch in image_loader(items, batch_size, 0, device):
        bad = [error for ok, error in zip(batch["ok"], batch["error"]) if not ok]
        if bad:
            raise EngineError(f"cannot read {len(bad)} image(s) of the split: {bad[0]}")
        parts.append(encode_pixels(model, batch["pixels"], device))
    return np.concatenate(parts)


def measure(data: Path, split: str, checkpoint: str | None, batch_size: int, masks: Path | None = None) -> dict:
    import numpy as np
    import torch

    import encoders
    from engine.data import load_dataset
    from engine.evaluation.class_recall import CLASS_KS, class_recalls, per_class_recalls
    from engine.metrics import retrieval_recalls
    from indexing.encode import encode_texts

    subset = load_dataset(data).split(split)
    if not subset.images or not subset.captions:
        raise EngineError(f"{data}: split {split!r} needs images and captions for this ablation")
    unlabelled = [image.path.name for image in subset.images if image.label is None]
    if unlabelled:
        raise EngineError(f"{data}: {len(unlabelled)} images of split {split!r} have no class label "
                          f"(e.g. {unlabelled[0]}); image→image recall by class needs labels")
    try:
        model = encoders.load_model(checkpoint)
    except EngineError as error:
        if checkpoint is not None:
            raise
        raise EngineError(f"the shipped model is not available ({error}); pass --checkpoint MODEL_DIR") from None
    device = torch.device("cpu")
    model.to(device).eval()
    labels = [image.label for image in subset.images]
    texts = encode_texts(model, [caption.text for caption in subset.captions], batch_size * 4, model.config.embed_dim)
    row_of = {image.image_id: row for row, image in enumerate(subset.images)}
    owners = np.array([row_of[caption.image_id] for caption in subset.captions])
    rows = []
    for name, mode, sigma in MODES:
        started = time.perf_counter()
        images = encode_masked(model, subset, mode, sigma, batch_size, device, masks)
        rows.append({"mode": name, "mask": mode, "sigma": sigma,
                     "image_to_image": class_recalls(images, labels, CLASS_KS),
                     "image_to_image_per_class": per_class_recalls(images, labels, CLASS_KS),
                     "text_image": retrieval_recalls(images, texts, owners),
                     "encode_seconds": round(time.perf_counter() - started, 2)})
        print(f"{name}: i2i R@1 {rows[-1]['image_to_image']['r1']:.2f}, mR {rows[-1]['text_image']['mR']:.2f}",
              flush=True)
    foreground = None
    if masks is not None and (masks / "masks.json").is_file():
        import json

        report = json.loads((masks / "masks.json").read_text())
        foreground = {"source": report.get("source"), "per_class": report.get("per_class_foreground", {}),
                      "mean": report.get("mean_foreground")}
    return {"rows": rows, "model": {"spec": checkpoint or "shipped-default", "fingerprint": model.fingerprint()},
            "masks": {"folder": str(masks) if masks else None, "foreground": foreground},
            "data": {"root": str(data), "split": split, "images": len(subset.images),
                     "captions": len(subset.captions), "classes": len(set(labels))}}


def write_comparison(result: dict, folder: Path, plot: Path) -> None:
    """Text↔image rows as `engine eval` result files + the Recall@K plot (`engine eval --compare` reads them)."""
    data = result["data"]
    dataset = {"name": Path(data["root"]).name, "root": data["root"], "split": data["split"],
               "images": data["images"], "captions": data["captions"]}
    rows = [(f"mask {row['mode']}", row["text_image"]) for row in result["rows"]]
    write_ablation_results(rows, dataset, result["model"], {"mode": "exact"}, result["meta"], folder, plot)


def render(result: dict) -> str:
    meta, data = result["meta"], result["data"]
    headers = ["mask", "i2i R@1", "i2i R@2", "i2i R@4", "i2i R@8", "I→T R@1", "I→T R@5", "I→T R@10",
               "T→I R@1", "T→I R@5", "T→I R@10", "mR"]
    table = [[row["mode"], *(f"{row['image_to_image'][f'r{k}']:.2f}" for k in (1, 2, 4, 8)),
              *(f"{row['text_image'][key]:.2f}" for key in TEXT_KEYS)] for row in result["rows"]]
    masks = result.get("masks") or {}
    foreground = masks.get("foreground") or {}
    if masks.get("folder"):
        where = (f"The foreground is read from the mask files in `{masks['folder']}` (source "
                 f"`{foreground.get('source', '?')}`, `engine index masks`)")
        if foreground.get("mean") is not None:
            where += f", which keep {foreground['mean'] * 100:.1f}% of the pixels on average"
        where += "; "
    else:
        where = ("UCM has no foreground masks, so the foreground is the built-in colour-contrast estimate of "
                 "`engine.data.masking` (the same for every model); ")
    return "\n".join([
        f"## {result.get('title', 'Background masking')}", "",
        f"Measured {meta['date']} on {meta['machine']}, commit `{meta['commit']}`.",
        f"Command: `{meta['command']}`", "",
        f"Data: {data['root']}, {data['split']} split ({data['images']} images, {data['captions']} captions, "
        f"{data['classes']} classes). Model: `{result['model']['spec']}` (fingerprint "
        f"`{result['model']['fingerprint'][:16]}`). " + where + "background pixels are set to 0 "
        "(hard) or multiplied by σ (soft) before the model's transform. Captions are not masked.",
        "image→image (i2i): every test image queries the other test images, a hit is an image of the same class "
        "within the top K (the background-bias paper's protocol); text↔image: PIR's protocol, exact search.", "",
        markdown_table(headers, table), "",
        f"![Recall@K by masking mode]({result.get('plot', 'img/ablation-masking.png')})", "",
        f"Side by side from the result files: `engine eval --compare {result.get('results', 'docs/results/masking')}"
        "/*.json --plot out.png`.", "", *per_class_table(result), ""])


def per_class_table(result: dict) -> list[str]:
    """Image→image R@1 per class under each mask (the study's background-reliance diagnosis)."""
    rows = [row for row in result["rows"] if "image_to_image_per_class" in row]
    if not rows:
        return []
    shares = ((result.get("masks") or {}).get("foreground") or {}).get("per_class") or {}
    headers = ["class", *(["foreground kept"] if shares else []), *(f"i2i R@1 {row['mode']}" for row in rows)]
    table = []
    for name in rows[0]["image_to_image_per_class"]:
        cells = [name, *([f"{shares[name] * 100:.0f}%" if name in shares else "—"] if shares else [])]
        cells += [f"{row['image_to_image_per_class'][name]['r1']:.0f}" for row in rows]
        table.append(cells)
    return ["Per class (image→image R@1, % of that class's test queries; a class that gains under a mask was "
            "confused by its background, one that loses was recognised by it):", "", markdown_table(headers, table)]


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ucm_captions")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "masking.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "results" / "masking",
                        help="folder for one `engine eval` result JSON per mode")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "ablation-masking.png")
    parser.add_argument("--masks", type=Path, default=None,
                        help="folder of foreground PNGs (engine index masks) instead of the built-in estimate")
    parser.add_argument("--block", default="masking", help="block of --docs to rewrite")
    parser.add_argument("--title", default="Background masking", help="heading of the block")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(args.data, args.split, args.checkpoint, args.batch_size, args.masks)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result["meta"] = run_meta(REPO)
    result.update(title=args.title, plot=_relative(args.plot, args.docs.parent),
                  results=_relative(args.results, REPO))
    write_json_atomic(args.out, result, indent=1)
    write_comparison(result, args.results, args.plot)
    update_page(args.docs, args.block, render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
