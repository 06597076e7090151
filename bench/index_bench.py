"""Indexing benchmark: `engine index` on a real dataset or N synthetic images → images/s and peak RSS.

    python -m bench.index_bench --data ../shared/data/ucm_captions          # real data, shipped model
    python -m bench.index_bench --images 100000 --model tiny-test           # synthetic, bounded-memory check
    python -m bench.index_bench --data ../shared/data/ucm_captions --test-time-views 1   # one pass per image

Synthetic images are generated into a temporary folder first (not timed). The index run is timed end to end
in a child process, so its peak RSS (``ru_maxrss`` of children) is the indexing process alone; with DataLoader
workers the workers' own peaks are not included (their memory is one decoded batch each). Each run is appended
to docs/bench/indexing.json and the ``indexing`` block of docs/benchmarks.md is re-rendered from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from release.docs_blocks import markdown_table, update_page
from bench.machine import command_line, load_average, machine_info
from indexing.layout import INDEX_JSON

REPO = Path(__file__).resolve().parents[1]

IMAGE_SIDE = 64  # small tiles keep generation cheap; the model resizes them anyway
RESULTS = REPO / "docs" / "bench" / "indexing.json"


def generate(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        pixels = rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"tile_{number:07d}.png", compress_level=1)


def run_index(data: Path, out: Path, args: argparse.Namespace) -> tuple[float, float, str]:
    command = [sys.executable, "-m", "engine", "index", str(data), "--out", str(out), "--batch-size",
               str(args.batch_size), "--shard-size", str(args.shard_size), "--device", args.device]
    if args.model:
        command += ["--model", args.model]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.test_time_views is not None:
        command += ["--test-time-views", str(args.test_time_views)]
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"engine index failed:\n{result.stderr[-2000:]}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    output = (result.stdout + "\n" + result.stderr).splitlines()
    summary = " / ".join(line.strip() for line in output if line.strip().startswith(("encoded", "search tuned")))
    return seconds, peak_mib, summary


def _model_label(run: dict) -> str:
    """Model name plus the image views averaged (runs before the views existed encoded one)."""
    return f"{run['model']} ({run.get('test_time_views', 1)})"


def render(runs: list[dict]) -> str:
    rows = [[r["date"], r["machine"].get("cpu_model") or "?", r["data"], str(r["images"]), _model_label(r),
             str(r["shard_size"]), f"{r['seconds']:.0f}", f"{r['images_per_s']:.1f}", f"{r['peak_rss_mib']:.0f}",
             r["load_before"]] for r in runs]
    machine = runs[-1]["machine"] if runs else {}
    return "\n".join([
        "## Indexing throughput and memory (`bench/index_bench.py`)",
        "",
        f"Machine of the last run: {machine.get('nproc')} cores ({machine.get('cpu_model')}), "
        f"{(machine.get('ram_bytes') or 0) / 2**30:.1f} GiB RAM; compare rows of the same cpu only. End to end: process start, model load, image "
        "decode, encoding, caption encoding (real data), Parquet shards, FAISS build. Peak RSS is the indexing "
        "process's. Commands: `python -m bench.index_bench --data ../shared/data/ucm_captions` and "
        "`python -m bench.index_bench --images N --model tiny-test --shard-size S`.",
        "",
        markdown_table(["date", "cpu", "data", "images", "model (image views)", "shard size", "seconds", "images/s", "peak RSS MiB",
                        "load avg before"], rows),
        "",
        "Each run's own summary lines (encoding rate, search calibration) are kept in `docs/bench/indexing.json`.",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="index this dataset instead of synthetic images")
    parser.add_argument("--images", type=int, default=100_000, help="synthetic images (without --data)")
    parser.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--test-time-views", type=int, default=None,
                        help="passed to engine index (default: the model's own setting)")
    args = parser.parse_args()
    load_before = " ".join(f"{value:.1f}" for value in load_average())
    with tempfile.TemporaryDirectory(prefix="index-bench-") as scratch:
        out = Path(scratch) / "index"
        if args.data is not None:
            data, count, label = args.data, None, args.data.name
        else:
            data, count, label = Path(scratch) / "images", args.images, "synthetic random tiles"
            generate(data, args.images)
        seconds, peak_mib, summary = run_index(data, out, args)
        built = json.loads((out / INDEX_JSON).read_text())
        count = built["image_count"] if count is None else count
    run = {"date": time.strftime("%Y-%m-%d"), "data": label, "images": count, "model": args.model or "shipped",
           "test_time_views": built.get("test_time_views") or 1, "shard_size": args.shard_size,
           "seconds": round(seconds, 1), "images_per_s": count / seconds,
           "peak_rss_mib": peak_mib, "load_before": load_before, "summary": summary, "machine": machine_info(),
           "command": command_line()}
    runs = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    runs.append(run)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(runs, indent=2))
    update_page(REPO / "docs" / "benchmarks.md", "indexing", render(runs))
    print(f"{label}: {count} images in {seconds:.1f} s ({count / seconds:.1f} images/s), peak RSS {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
