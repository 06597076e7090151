"""Zero-shot scene classification of one labelled archive and of degraded copies of it: how far does the model's
accuracy fall when the same scenes arrive at a lower resolution, in one band, or heavily compressed, as they do
from other sensors and other archives?

Each degradation writes a copy of the dataset (same folders and file names, so ``engine eval --zero-shot`` picks
the same images: AID's held-out part when the model trained on AID's train part) and scores it exactly as
``engine eval DIR --zero-shot`` does (1,000-draw image-bootstrap intervals). Every copy is paired with the
original on the same images (``engine.metrics.paired_accuracy_difference``).

    python -m bench.zero_shot_degraded --data ../shared/data/aid --degrade size:96 size:64 size:32 gray jpeg:20 \
        --work runs/zs-degraded --update-docs

Degradations: ``size:N`` (bicubic resize to N×N; the model's own transform brings it back to its input size),
``gray`` (luminance copied to three bands: a panchromatic sensor), ``jpeg:Q`` (JPEG at quality Q, 1–95).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from engine.atomic import write_json_atomic
from engine.errors import ConfigError
from release.docs_blocks import update_page

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = "original"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def parse_degradation(spec: str) -> tuple[str, int | None]:
    """``size:N`` / ``gray`` / ``jpeg:Q`` -> (kind, value); anything else is a one-line ConfigError."""
    kind, _, value = spec.partition(":")
    if kind == "gray" and not value:
        return kind, None
    limits = {"size": (8, 4096), "jpeg": (1, 95)}
    if kind in limits and value.isdigit() and limits[kind][0] <= int(value) <= limits[kind][1]:
        return kind, int(value)
    raise ConfigError(f"--degrade {spec!r}: expected size:N (8-4096 px), gray or jpeg:Q (quality 1-95)")


def degrade(image, spec: str):
    """The degraded copy of a PIL image (RGB)."""
    import io

    from PIL import Image

    kind, value = parse_degradation(spec)
    image = image.convert("RGB")
    if kind == "size":
        return image.resize((value, value), Image.BICUBIC)
    if kind == "gray":
        return image.convert("L").convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=value)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def degraded_copy(source: Path, spec: str, work: Path) -> Path:
    """``work/<spec>/``: every image of ``source`` degraded, under the same relative path (lossless PNG bytes kept
    in the original's file name, so listings match). Built once: a finished copy carries a stamp and is reused."""
    from PIL import Image

    folder = work / spec.replace(":", "-")
    images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    stamp = {"source": str(source), "degradation": spec, "images": len(images)}
    if (folder / "degraded.json").is_file() and json.loads((folder / "degraded.json").read_text()) == stamp:
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for path in images:
        out = staging / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as original:
            degrade(original, spec).save(out, format="PNG")
    (staging / "degraded.json").write_text(json.dumps(stamp))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def render(rows: list[dict], meta: dict) -> str:
    lines = [f"Run {meta['date']} on {meta['machine']}, commit `{meta['commit']}`: `{meta['command']}`", "",
             f"{meta['dataset']}: {meta['split_rule']}; model fingerprint `{meta['fingerprint']}`, "
             f"{meta['views']} view(s) per image, prompt set `{meta['prompt_set']}`. Intervals: 95% image bootstrap "
             "(1,000 draws); the change is paired with the original on the same images. Result files: "
             f"`{meta['results']}`.", "",
             "| images as | top-1 | 95% interval | top-5 | mean per class | top-1 change (paired 95% interval) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        low, high = row["interval"]
        change = ("" if row["name"] == ORIGINAL else
                  f"{row['change']['top1']:+.2f} ({row['change']['bounds'][0]:+.2f} to {row['change']['bounds'][1]:+.2f})")
        lines.append(f"| {row['name']} | {row['top1']:.2f} | {low:.2f}–{high:.2f} | {row['top5']:.2f} | "
                     f"{row['mean_class_top1']:.2f} | {change} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/aid"), help="a labelled scene archive")
    parser.add_argument("--degrade", nargs="+", default=["size:96", "size:64", "size:32", "gray", "jpeg:20"])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--views", type=int, default=1, help="test-time views per image")
    parser.add_argument("--work", type=Path, default=Path("runs/zs-degraded"), help="where the degraded copies go")
    parser.add_argument("--results", type=Path, default=REPO / "docs" / "results" / "zero-shot" / "degraded")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "MODEL_CARD.md")
    parser.add_argument("--block", default="zero-shot-degraded")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    for spec in args.degrade:
        parse_degradation(spec)  # every spec checked before hours of work

    import numpy as np

    from bench.machine import command_line, machine_text
    from engine.evaluation.report import decode_class_ranks, git_commit
    from engine.evaluation.zero_shot import evaluate_zero_shot, write_zero_shot
    from engine.metrics import paired_accuracy_difference

    rows, base = [], None
    for name in [ORIGINAL, *args.degrade]:
        root = args.data if name == ORIGINAL else degraded_copy(args.data, name, args.work)
        result = evaluate_zero_shot(root, None, args.model, 64, 0, "cpu", name, args.views, bootstrap=1000)
        path = args.results / f"{args.data.name}-{name.replace(':', '-')}.json"
        write_zero_shot(result, path)
        data = asdict(result)
        ranks, labels = decode_class_ranks(path, data)
        row = {"name": name, **result.accuracy, "interval": result.accuracy_interval["bounds"]["top1"],
               "images": result.dataset["images"], "seconds": result.seconds,
               "file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)}
        if base is None:
            base = (ranks, labels, data)
        elif not np.array_equal(labels, base[1]):
            raise ConfigError(f"{root}: the degraded copy lists other images than {args.data}")
        else:
            row["change"] = paired_accuracy_difference(base[0], ranks, labels)
        rows.append(row)
        print(f"{name}: top-1 {row['top1']:.2f} ({row['interval'][0]:.2f}–{row['interval'][1]:.2f})"
              + (f", change {row['change']['top1']:+.2f}" if "change" in row else ""), flush=True)
    first = base[2]
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": machine_text(), "commit": git_commit(REPO),
            "command": command_line(), "dataset": first["dataset"]["name"], "split_rule": first["dataset"]["split_rule"],
            "fingerprint": first["model"]["fingerprint"][:16], "views": args.views,
            "prompt_set": first["prompts"]["set"],
            "results": str(args.results.relative_to(REPO)) if args.results.is_relative_to(REPO) else str(args.results)}
    write_json_atomic(args.results / "summary.json", {"meta": meta, "rows": rows}, indent=1)
    text = render(rows, meta)
    if args.update_docs:
        update_page(args.docs, args.block, text)
    print(text)


if __name__ == "__main__":
    main()
