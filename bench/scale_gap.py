"""What AID's storage scale costs: UCM retrieval with the images as stored (256 px) and brought down to AID's 150 px.

The AID copy in ../shared/data is stored at 150×150 (JPEG quality 85; the original is 600×600), UCM at 256×256.
The model's transform resizes every image to 256 px (shorter side) and crops 224, so an AID image is upsampled
1.7× and carries the detail of a 150 px image. This script degrades the evaluated UCM split the same way
(resize to 150×150 with antialiasing, JPEG quality 85), evaluates each checkpoint with `engine eval`'s code on
the original and the degraded split, and writes the difference: the loss of a model trained at 256 px when it
sees 150 px detail. The rows go to docs/bench/scale_gap.json and the ``scale-gap`` block of docs/ablations.md.

    python -m bench.scale_gap --data ../shared/data/ucm_captions --splits val test --test-time-views 1 \
        --checkpoint shipped --checkpoint runs/ablation-tail/o-mix-aid-seed1/best
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from release.docs_blocks import update_page
from engine.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[1]

SHIPPED = "shipped"


def degraded_copy(root: Path, split: str, size: int, quality: int, folder: Path) -> Path:
    """A copy of the dataset folder whose ``split`` images are stored at ``size`` px (other files linked)."""
    from PIL import Image

    from engine.data import load_dataset

    dataset = load_dataset(root)
    degrade = {image.path.resolve() for image in dataset.images if image.split == split}
    for source in root.rglob("*"):
        target = folder / source.relative_to(root)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif source.resolve() in degrade:
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(source) as image:
                small = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
            small.save(target, format="JPEG", quality=quality)
        elif source.suffix.lower() in (".json", ".txt"):  # annotation files: copied, so paths resolve here
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source.resolve())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ucm_captions"))
    parser.add_argument("--splits", nargs="+", default=["val"])
    parser.add_argument("--checkpoint", action="append", default=None,
                        help=f"model folder, or '{SHIPPED}' for the shipped model (repeatable)")
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--quality", type=int, default=85)
    parser.add_argument("--test-time-views", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "scale_gap.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    parser.add_argument("--block", default="scale-gap")
    args = parser.parse_args()

    from bench.machine import command_line, machine_text
    from engine.evaluation.cli import evaluate
    from engine.evaluation.report import git_commit

    rows = []
    checkpoints = args.checkpoint or [SHIPPED]
    for split in args.splits:
        with tempfile.TemporaryDirectory() as temp:
            small = degraded_copy(args.data.resolve(), split, args.size, args.quality, Path(temp) / "data")
            for checkpoint in checkpoints:
                spec = None if checkpoint == SHIPPED else checkpoint
                scores = {}
                for name, root in (("stored", args.data), (f"{args.size}px", small)):
                    result = evaluate(root, split, spec, 64, 0, "cpu", test_time_views=args.test_time_views)
                    scores[name] = result.recalls["mR"]
                    fingerprint = result.model["fingerprint"]
                row = {"checkpoint": checkpoint, "fingerprint": fingerprint[:16], "split": split,
                       "mR_stored": scores["stored"], f"mR_{args.size}px": scores[f"{args.size}px"],
                       "difference": scores[f"{args.size}px"] - scores["stored"]}
                rows.append(row)
                print(row, flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": machine_text(), "commit": git_commit(REPO),
            "command": command_line(), "size": args.size, "quality": args.quality,
            "test_time_views": args.test_time_views}
    write_json_atomic(args.out, {"meta": meta, "rows": rows}, indent=1)
    update_page(args.docs, args.block, render(rows, meta))
    print(render(rows, meta))


def render(rows: list[dict], meta: dict) -> str:
    size = meta["size"]
    lines = [f"Run {meta['date']} on {meta['machine']}, commit `{meta['commit']}`: `{meta['command']}`", "",
             f"UCM images as stored (256 px) against the same images brought down to {size}×{size} px and stored as "
             f"JPEG quality {meta['quality']}, as the AID copy is; `engine eval` exact search, "
             f"{meta['test_time_views']} test-time view(s).", "",
             f"| model | fingerprint | split | mR at 256 px | mR at {size} px | difference |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['checkpoint']} | `{row['fingerprint']}` | {row['split']} | {row['mR_stored']:.2f} | "
                     f"{row[f'mR_{size}px']:.2f} | {row['difference']:+.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
