"""Big GeoTIFF scenes index in bounded memory: assemble a large tiled GeoTIFF (internal overviews, COG layout)
from the real NAIP tiles of ``../shared/data/geotiff``, index it with ``engine index``, and report the peak RSS
of the whole process tree (loader workers included), chips/s, and a ``kill -9`` + rerun that must leave every
planned chip exactly once.

    python -m bench.geo_big_scene --side 40000 --work runs/geo-bench          # the issue's size
    python -m bench.geo_big_scene --side 8000 --work runs/geo-bench --model tiny-test

Steps (each skipped when its output exists, so a rerun continues): ``scene.tif`` written tile by tile with
windowed writes (never a whole-scene array), overviews built by GDAL; ``idx/`` the clean run (peak RSS and
chips/s measured here); ``idx-killed/`` a run killed with SIGKILL once its first shard is on disk, then rerun.
Results go to ``WORK/geo_big_scene.json``; docs/geo.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TILES = REPO.parent / "shared" / "data" / "geotiff"
BLOCK = 512
OVERVIEWS = (2, 4, 8, 16, 32, 64)
SAMPLE_SECONDS = 0.2


def _tiles() -> list[np.ndarray]:
    """The RGB bands of the real NAIP scenes, with their flips: 12 distinct 724 x 934 tiles."""
    import rasterio

    tiles = []
    for path in sorted(TILES.glob("naip_*.tif")):
        with rasterio.open(path) as scene:
            rgb = scene.read([1, 2, 3])
        tiles += [rgb, rgb[:, ::-1], rgb[:, :, ::-1], rgb[:, ::-1, ::-1]]
    if not tiles:
        raise SystemExit(f"no NAIP tiles in {TILES}")
    return tiles


def build_scene(path: Path, side: int) -> dict:
    """A ``side`` x ``side`` px, 3-band uint8, UTM 14N, 5 m scene, deflate-compressed in 512 px blocks."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    started = time.perf_counter()
    tiles = _tiles()
    height, width = tiles[0].shape[1:]
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8",
               "crs": "EPSG:26914", "transform": from_origin(400_000.0, 5_250_000.0, 5.0, 5.0), "tiled": True,
               "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate", "predictor": 2,
               "BIGTIFF": "IF_SAFER", "nodata": None}
    temp = path.with_suffix(".partial.tif")
    with rasterio.open(temp, "w", **profile) as scene:
        number = 0
        for row in range(0, side, height):
            for col in range(0, side, width):
                tile = tiles[number % len(tiles)]
                number += 1
                rows, cols = min(height, side - row), min(width, side - col)
                scene.write(np.ascontiguousarray(tile[:, :rows, :cols]), window=Window(col, row, cols, rows))
        written = time.perf_counter() - started
        scene.build_overviews([factor for factor in OVERVIEWS if side // factor >= 256], Resampling.nearest)
    os.replace(temp, path)
    return {"side": side, "tiles": number, "write_seconds": round(written, 1),
            "total_seconds": round(time.perf_counter() - started, 1), "bytes": path.stat().st_size}


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of ``pid`` and all its descendants, from /proc. RSS summed over processes counts the
    pages a forked loader worker shares with its parent twice; PSS splits shared pages between their users, so
    its sum is the tree's real footprint."""
    rss, pss, stack, seen = 0, 0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return rss, pss


def _command(scene: Path, out: Path, args) -> list[str]:
    return [sys.executable, "-m", "engine", "index", str(scene), "--out", str(out), "--model", args.model,
            "--chip-size", str(args.chip_size), "--shard-size", str(args.shard_size), "--batch-size",
            str(args.batch_size), "--workers", str(args.workers), "--test-time-views", str(args.test_time_views)]


def run_index(scene: Path, out: Path, args, kill_after_first_shard: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "ab") as handle:
        process = subprocess.Popen(_command(scene, out, args), cwd=REPO, env=env, stdout=handle, stderr=handle,
                                   start_new_session=True)
        peak, peak_pss = 0, 0
        while process.poll() is None:
            rss, pss = _tree_memory(process.pid)
            peak, peak_pss = max(peak, rss), max(peak_pss, pss)
            if kill_after_first_shard and any((out / "shards").glob("part-*.parquet")):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                break
            time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    chips = _summary_number(text, "encoded ", " images")
    rate = [line for line in text.splitlines() if "images/s) and" in line]
    loop_rate = float(rate[-1].split("(")[1].split(" images/s")[0]) if rate else None
    return {"encode_loop_chips_per_second": loop_rate,"returncode": process.returncode, "seconds": round(seconds, 1), "peak_rss_mib": round(peak / 2**20),
            "peak_pss_mib": round(peak_pss / 2**20),
            "encoded": chips, "chips_per_second": round(chips / seconds, 2) if chips else None,
            "log": str(log)}


def _summary_number(text: str, before: str, after: str) -> int:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(before) and after in line:
            return int(line[len(before):].split(after)[0])
    return 0


def check_ids(out: Path) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(out / "shards", columns=["image_id", "col_off", "row_off"])
    ids = table.column("image_id").to_numpy()
    windows = set(zip(table.column("col_off").to_pylist(), table.column("row_off").to_pylist()))
    return {"rows": len(ids), "distinct_ids": len(np.unique(ids)), "distinct_windows": len(windows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=40_000, help="scene side in pixels")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "geo-bench")
    parser.add_argument("--model", default="tiny-test", help="model for engine index (a named config or folder)")
    parser.add_argument("--chip-size", type=int, default=224)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--test-time-views", type=int, default=1, help="dihedral views per chip (1: fastest)")
    parser.add_argument("--skip-resume", action="store_true", help="only the clean run")
    parser.add_argument("--label", default="", help="suffix of the index folders and results key (other settings)")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    scene = args.work / f"scene-{args.side}.tif"
    key = f"{args.side}{args.label}"
    results: dict = {"command": " ".join(["python -m bench.geo_big_scene", *(argv or sys.argv[1:])])}
    if not scene.exists():
        results["scene"] = build_scene(scene, args.side)
        print(f"scene {scene}: {results['scene']}", flush=True)
    clean = args.work / f"idx-{key}"
    if not (clean / "index.json").exists():
        results["clean"] = run_index(scene, clean, args)
        results["clean"].update(check_ids(clean))
        print(f"clean run: {results['clean']}", flush=True)
    if not args.skip_resume:
        killed = args.work / f"idx-killed-{key}"
        if not (killed / "index.json").exists():
            first = run_index(scene, killed, args, kill_after_first_shard=True)
            shards_at_kill = len(list((killed / "shards").glob("part-*.parquet")))
            second = run_index(scene, killed, args)
            results["resume"] = {"killed": first, "shards_at_kill": shards_at_kill, "rerun": second,
                                 **check_ids(killed)}
            print(f"kill -9 + rerun: {results['resume']}", flush=True)
    report = args.work / "geo_big_scene.json"
    previous = json.loads(report.read_text()) if report.exists() else {}
    previous[key] = {**previous.get(key, {}), **results}
    report.write_text(json.dumps(previous, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
