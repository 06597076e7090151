"""Scaling on paper: indexing time for 1 / 8 / 64 workers from costs measured on this machine.

    python -m bench.scaling_table --encode docs/bench/encode.json --ivf runs/syn-10m [--update-docs]

Inputs, all measured: from ``bench/encode_bench.py``'s single-process run (``docs/bench/encode.json``) the
seconds per image of image encoding, caption encoding and shard writing on one worker (this machine's cores),
and, from its Ray run, the driver's own seconds per image (``assemble``: putting rows back into shards), which
does not shrink with more workers. ``--ivf``: a built index whose trained IVF quantiser is reused to time
adding ``--add-vectors`` of its vectors (seconds per million), plus that index's recorded training time.
The model: W workers each encode like this machine; throughput = min(W / per-image worker seconds,
1 / driver seconds per image); FAISS is trained once on a 1 M-vector sample and filled on one machine after
encoding (what ``engine index`` does today). Nothing here was run on 8 or 64 machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from release.docs_blocks import markdown_table, update_page
from bench.machine import run_meta
from engine.atomic import write_json_atomic

REPO = Path(__file__).resolve().parents[1]

WORKERS = (1, 8, 64)
ARCHIVES = (1_000_000, 10_000_000, 100_000_000)
RESULTS = REPO / "docs" / "bench" / "scaling.json"


def per_image_costs(encode: dict) -> dict[str, float]:
    single = next(run for run in encode["runs"] if not run["ray"] and run["with_text"])
    images = single["images"]
    stages = single["stages"]
    costs = {name: stages.get(name, 0.0) / images for name in ("image encode", "caption encode", "shard write")}
    ray_run = next((run for run in encode["runs"] if run["ray"]), None)
    costs["driver"] = ray_run["stages"].get("assemble", 0.0) / ray_run["images"] if ray_run else 0.0
    costs["fixed"] = stages.get("model load", 0.0) + stages.get("runtime build", 0.0)
    return costs


def ivf_add_seconds_per_million(index_dir: Path, vectors: int) -> tuple[float, str]:
    """Time adding ``vectors`` stored vectors to a copy of the index's trained empty IVF (its quantiser)."""
    import faiss

    from indexing.shards import embeddings_of, read_columns, shard_files

    trained = sorted((index_dir / "faiss-trained").glob("trained-*.index"))
    if not trained:
        raise SystemExit(f"{index_dir}: no trained quantiser in faiss-trained/ (build it with synthetic_index.py)")
    template = faiss.read_index(str(trained[0]))
    index = faiss.clone_index(template)
    added, seconds = 0, 0.0
    for file in shard_files(index_dir):
        table = read_columns(file, ["image_id", "embedding"])
        take = min(table.num_rows, vectors - added)
        matrix = np.ascontiguousarray(embeddings_of(table)[:take])
        ids = table.column("image_id").to_numpy()[:take].astype(np.int64)
        started = time.perf_counter()
        index.add_with_ids(matrix, ids)
        seconds += time.perf_counter() - started
        added += take
        if added >= vectors:
            break
    nlist = faiss.extract_index_ivf(index).nlist
    return seconds / added * 1e6, f"IVF{nlist},Flat"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encode", type=Path, default=REPO / "docs" / "bench" / "encode.json")
    parser.add_argument("--ivf", type=Path, required=True, help="index folder with faiss-trained/ (synthetic_index)")
    parser.add_argument("--add-vectors", type=int, default=1_000_000)
    parser.add_argument("--train-seconds", type=float, required=True,
                        help="measured training time of that quantiser (from its build log)")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    encode = json.loads(args.encode.read_text())
    costs = per_image_costs(encode)
    add_per_million, factory = ivf_add_seconds_per_million(args.ivf, args.add_vectors)
    result = {"meta": run_meta(REPO), "costs_per_image": costs, "ivf_add_s_per_million": add_per_million,
              "ivf_factory": factory, "train_seconds": args.train_seconds, "encode_run": encode["meta"]}
    write_json_atomic(RESULTS, result, indent=1)
    text = render(result)
    print(text)
    if args.update_docs:
        update_page(REPO / "docs" / "benchmarks.md", "scaling", text)
    return 0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def render(result: dict) -> str:
    costs = result["costs_per_image"]
    worker = costs["image encode"] + costs["caption encode"] + costs["shard write"]
    rows = []
    for workers in WORKERS:
        rate = workers / worker
        if costs["driver"] > 0:
            rate = min(rate, 1 / costs["driver"])
        cells = [str(workers), f"{rate:,.0f}"]
        for count in ARCHIVES:
            encode_s = count / rate + costs["fixed"]
            faiss_s = result["train_seconds"] + count / 1e6 * result["ivf_add_s_per_million"]
            cells.append(f"{_hours(encode_s)} + {_hours(faiss_s)}")
        rows.append(cells)
    meta = result["meta"]
    driver_limit = f"{1 / costs['driver']:,.0f} images/s" if costs["driver"] > 0 else "not measured"
    return "\n".join([
        "## Scaling on paper (`bench/scaling_table.py`)", "",
        f"Computed {meta['date']} (command: `{meta['command']}`) from costs measured on this machine: per image on "
        f"one worker (the encode benchmark's single-process run, {result['encode_run']['date']}): image encoding "
        f"{costs['image encode'] * 1000:.1f} ms, caption encoding {costs['caption encode'] * 1000:.1f} ms, shard "
        f"writes {costs['shard write'] * 1000:.2f} ms; the Ray driver's own work {costs['driver'] * 1000:.3f} ms per "
        f"image (so one driver caps the cluster at {driver_limit}); model load + runtime build "
        f"{costs['fixed']:.0f} s per worker (in parallel); FAISS `{result['ivf_factory']}`: quantiser training "
        f"{_hours(result['train_seconds'])} on a 1 M-vector sample, adding {result['ivf_add_s_per_million']:.0f} s "
        "per million vectors on one machine.", "",
        "Each cell: encoding time (W workers in parallel) + FAISS build time (one machine, after encoding). A "
        "worker = one machine like this one (2 cores); with GPUs the image-encoding term shrinks, the caption and "
        "FAISS terms do not. Not measured on 8 or 64 machines: this is arithmetic on the measured costs.", "",
        markdown_table(["workers", "images/s", *[f"{count // 1_000_000} M tiles" for count in ARCHIVES]], rows)])


if __name__ == "__main__":
    sys.exit(main())
