"""Zero-shot scene classification on AID's held-out 2,000 images for several checkpoints, side by side.

The metric and prompts are `engine eval DIR --zero-shot`'s (engine/evaluation/zero_shot.py). What differs is
where the image embeddings come from: for models trained with `--unfreeze-last 1` the images' trunk maps (the
frozen part before the last EfficientNet stage, float16) are read from the file `engine train-instruction
--unfreeze-last 1 --feature-cache DIR` wrote for the held-out images, and only the last stage and the heads run,
one view per image. On this shared 2-core machine that turns ~30 min of image encoding per model into seconds.
``--check RESULT.json`` compares the first checkpoint with an `engine eval --zero-shot --test-time-views 1`
result of the same model and stops when they disagree by more than 0.2 top-1 points (float16 trunk maps).

    python -m bench.zero_shot_aid --trunk-cache /work/runs-shared/cache-aid-tail1 \
        --checkpoint shipped=shipped --checkpoint mixed=runs/ablation-tail/o-mix-aid-seed1/best \
        --check runs/zs/shipped-aid-heldout-1view.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from release.docs_blocks import update_page
from engine.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[1]

TAIL = 1


def held_out_embeddings(model, dataset, positions: list[int], folder: Path, batch_size: int = 128):
    """1-view image embeddings of ``positions`` from the cached trunk maps (computed and cached if absent)."""
    import torch

    from training import model_ops
    from training.instruction_tail import cached_trunks

    model.eval()
    trunks = cached_trunks(model.vision.model, dataset, positions, 1, TAIL, model.image_transform(train=False),
                           64, folder)
    rows = []
    with torch.no_grad():
        for start in range(0, len(trunks), batch_size):
            rows.append(model_ops.embed_images(model, {"trunk": trunks[start:start + batch_size, 0]}, TAIL).float())
    return torch.cat(rows).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/aid"))
    parser.add_argument("--trunk-cache", type=Path, required=True)
    parser.add_argument("--checkpoint", action="append", required=True, help="LABEL=PATH ('shipped' = the default)")
    parser.add_argument("--check", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "zero_shot_aid.json")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "results" / "zero-shot")
    parser.add_argument("--img", type=Path, default=REPO / "docs" / "img", help="folder for the confusion PNGs")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    parser.add_argument("--block", default="zero-shot")
    args = parser.parse_args()

    import numpy as np

    import encoders
    from bench.machine import command_line, machine_text
    from engine.data import load_dataset
    from engine.data.splits import stratified_split
    from engine.evaluation.report import git_commit
    from engine.evaluation.zero_shot import class_text_embeddings, plot_confusion, zero_shot_metrics
    from engine.evaluation.zero_shot_prompts import PROMPT_SET

    dataset = load_dataset(args.data)
    _, held_out = stratified_split(dataset)
    classes = dataset.classes
    labels = np.array([classes.index(dataset.images[p].label) for p in held_out])
    rows = []
    for number, item in enumerate(args.checkpoint):
        label, _, path = item.partition("=")
        started = time.perf_counter()
        model = encoders.load_model(None if path == "shipped" else path)
        model.set_test_time_views(1)  # what the cached path computes (and part of the fingerprint)
        images = held_out_embeddings(model, dataset, held_out, args.trunk_cache)
        metrics = zero_shot_metrics(images, class_text_embeddings(model, classes), labels, classes)
        row = {"label": label, "checkpoint": path, "fingerprint": model.fingerprint()[:16],
               "seconds": round(time.perf_counter() - started, 1), **metrics["accuracy"]}
        if number == 0 and args.check is not None:
            reference = json.loads(args.check.read_text())
            row["check"] = {"file": str(args.check), "top1": reference["accuracy"]["top1"],
                            "top5": reference["accuracy"]["top5"]}
            if abs(reference["accuracy"]["top1"] - row["top1"]) > 0.2 or \
                    reference["model"]["fingerprint"][:16] != row["fingerprint"]:
                raise SystemExit(f"cached-trunk zero-shot {row['top1']:.2f} differs from {args.check} "
                                 f"({reference['accuracy']['top1']:.2f}) or scored another model")
        rows.append(row)
        args.results.mkdir(parents=True, exist_ok=True)
        document = {"format": "engine-eval-zeroshot/1", "dataset": {
            "name": dataset.name, "kind": dataset.kind, "root": str(args.data), "split": "test",
            "split_rule": "held-out part of the stratified split (train fraction 0.8, seed 42)",
            "images": len(held_out), "classes": len(classes)},
            "model": {"spec": path, "fingerprint": model.fingerprint()}, "prompts": {"set": PROMPT_SET},
            "settings": {"label": label, "test_time_views": 1,
                         "images_from": "cached float16 trunk maps (bench/zero_shot_aid.py)"}, **metrics}
        write_json_atomic(args.results / f"aid-heldout-{label}.json", document, indent=1)
        plot_confusion(document, args.img / f"zero-shot-aid-{label}.png")
        print(f"{label}: top-1 {row['top1']:.2f}, top-5 {row['top5']:.2f}, mean per class "
              f"{row['mean_class_top1']:.2f} ({row['seconds']:.0f} s)", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": machine_text(), "commit": git_commit(REPO),
            "command": command_line(), "images": len(held_out), "classes": len(classes),
            "prompt_set": PROMPT_SET}
    write_json_atomic(args.out, {"meta": meta, "rows": rows}, indent=1)
    update_page(args.docs, args.block, render(rows, meta))
    print(render(rows, meta))


def render(rows: list[dict], meta: dict) -> str:
    lines = [f"Run {meta['date']} on {meta['machine']}, commit `{meta['commit']}`: `{meta['command']}`", "",
             f"AID held-out part ({meta['images']} images, {meta['classes']} classes; the images "
             "`engine train-instruction` and mixed training hold out), prompt set "
             f"`{meta['prompt_set']}`, one view per image. Result files: `docs/results/zero-shot/`, confusion "
             "matrices: `docs/img/zero-shot-aid-*.png`.", "",
             "| model | fingerprint | top-1 | top-5 | mean per-class top-1 |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | `{row['fingerprint']}` | {row['top1']:.2f} | {row['top5']:.2f} | "
                     f"{row['mean_class_top1']:.2f} |")
    checked = [row for row in rows if "check" in row]
    for row in checked:
        lines += ["", f"Check: `engine eval --zero-shot --test-time-views 1` on the same model gave top-1 "
                      f"{row['check']['top1']:.2f}, top-5 {row['check']['top5']:.2f} (`{row['check']['file']}`)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
