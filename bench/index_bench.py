"""Synthetic indexing benchmark: N random images → ``engine index`` → images/s and peak RSS.

Usage: ``python bench/index_bench.py --images 100000 --model tiny-test [--workers 4 --batch-size 128]``.
Images are generated into a temporary folder first (not timed); the index run is timed end to end in a
child process so its peak RSS (``ru_maxrss`` of children, Linux: KiB) is the indexing process alone.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIDE = 64  # small tiles keep generation cheap; the model resizes them anyway


def generate(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        pixels = rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"tile_{number:07d}.png", compress_level=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--model", default="tiny-test")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="index-bench-") as scratch:
        images, out = Path(scratch) / "images", Path(scratch) / "index"
        generate(images, args.images)
        command = [sys.executable, "-m", "engine", "index", str(images), "--out", str(out), "--model", args.model,
                   "--workers", str(args.workers), "--batch-size", str(args.batch_size), "--shard-size",
                   str(args.shard_size), "--device", args.device]
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            return result.returncode
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"images={args.images} model={args.model} workers={args.workers} batch={args.batch_size} "
          f"seconds={seconds:.1f} images_per_s={args.images / seconds:.1f} peak_rss_mib={peak_mib:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
