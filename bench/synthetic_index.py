"""Grow a real index into an N-image synthetic one, so the warm server can be timed at 1 M vectors on a laptop.

Encoding a million real tiles takes days on two cores, but query latency only depends on the vectors, the faiss
index and the catalog, not on where the pixels came from. So row ``i`` of the synthetic index copies the metadata
(path, split, class, captions) of template row ``i mod T`` of a real index built with the same model, and its
embedding is that row's embedding plus isotropic Gaussian noise, renormalised (``--noise 0.5`` puts a copy at
cosine ≈ 0.93 to its template when dim is 128). Text queries therefore land among meaningful, class-structured
neighbours, isotropic noise is the hard case for ANN indexes, and rerankers find real images behind every path.

The output folder is a normal index: 100k-row shards with explicit int64 ids, faiss built by
``indexing.faiss_build.build_faiss`` (so the automatic index choice decides, as for ``engine index``), and an
``index.json`` carrying the template's model fingerprint, so ``engine serve`` / ``engine query`` load it.
Resumable (rerun the same command after a kill); ``--faiss-shards N`` splits the faiss part for sharded serving,
and rerunning with another N only re-splits (the vectors and the trained quantiser are kept).

    python -m bench.synthetic_index --template /tmp/ucm-index --count 1000000 --out /tmp/syn-1m
    nohup nice -n 5 python -m bench.synthetic_index --template runs/ucm-1v --count 10000000 --out runs/syn-10m \\
        > runs/syn-10m.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

SHARD_ROWS = 100_000
RECIPE_FILE = "synthetic.json"  # the arguments that define the vectors (a resumed run must repeat them)
TRAINED_DIR = "faiss-trained"  # trained quantisers, kept for a resumed or re-split build
TEMPLATE_COLUMNS = ["path", "split", "label", "captions", "embedding", "width", "height"]


def read_template(template: Path):
    """(metadata table without embeddings, (T, D) embeddings, data root) of a real index."""
    import pyarrow as pa

    from indexing.shards import embeddings_of, read_columns, read_metadata, shard_files

    files = shard_files(template)
    if not files:
        raise ConfigError(f"--template {template}: no shards; build it with `engine index` first")
    tables = [read_columns(file, TEMPLATE_COLUMNS) for file in files]
    roots = {read_metadata(file).get("data_root", "") for file in files}
    if len(roots) != 1:
        raise ConfigError(f"--template {template}: shards come from {len(roots)} data roots; use a one-root index")
    table = pa.concat_tables(tables)
    return table.drop_columns(["embedding"]), embeddings_of(table), roots.pop()


def synthetic_rows(template_meta, template_vectors: np.ndarray, first: int, count: int, noise: float,
                   rng: np.random.Generator):
    """ImageRows for ids ``first .. first+count-1`` (template row = id mod T)."""
    from indexing.shards import ImageRows

    ids = np.arange(first, first + count, dtype=np.int64)
    source = ids % len(template_vectors)
    dim = template_vectors.shape[1]
    vectors = template_vectors[source] + rng.standard_normal((count, dim), dtype=np.float32) * (noise / np.sqrt(dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    meta = template_meta.take(source)
    rows = ImageRows(image_id=ids.tolist(), source_id=source.tolist(), path=meta.column("path").to_pylist(),
                     split=meta.column("split").to_pylist(), label=meta.column("label").to_pylist(),
                     captions=meta.column("captions").to_pylist(), width=meta.column("width").to_pylist(),
                     height=meta.column("height").to_pylist())
    rows.embeddings = list(vectors.astype(np.float32))
    return rows


def copy_caption_shards(template: Path, out: Path, template_rows: int) -> int:
    """Copy the template's caption shards (their image ids are the first copies' ids when the template's ids
    are its row positions), so the index carries real text queries: the build calibrates its search setting
    on them, as it would for the real collection. Returns the caption count (0 when not copied)."""
    from indexing.layout import SHARD_PATTERN, TEXT_SHARDS_DIR
    from indexing.shards import read_columns

    ids = np.concatenate([read_columns(file, ["image_id"]).column("image_id").to_numpy()
                          for file in shard_files_of(template)])
    if not np.array_equal(ids, np.arange(template_rows)):
        return 0
    (out / TEXT_SHARDS_DIR).mkdir(exist_ok=True)
    count = 0
    for file in sorted((template / TEXT_SHARDS_DIR).glob(SHARD_PATTERN)):
        shutil.copyfile(file, out / TEXT_SHARDS_DIR / file.name)
        count += read_columns(file, ["caption_id"]).num_rows
    return count


def shard_files_of(index_dir: Path) -> list[Path]:
    from indexing.shards import shard_files

    return shard_files(index_dir)


def build(template: Path, count: int, out: Path, noise: float, seed: int, factory: str | None,
          memory_budget: str, faiss_shards: int = 1, overwrite: bool = False) -> dict:
    """Resumable: shard K's vectors come from its own generator (seed, K), so a killed run rerun with the same
    arguments skips the shards already written and ends with the same index; the trained faiss quantiser is
    kept in ``faiss-trained.index`` so a kill during the faiss build does not train twice."""
    import resource

    from indexing.choose import parse_memory
    from engine.data.masking import MaskOptions
    from indexing.manifest import IndexConfig, ShardInfo, tool_version
    from indexing.faiss_build import build_faiss
    from indexing.layout import SHARDS_DIR, shard_name
    from indexing.loader import load_index
    from indexing.row_store import write_row_file
    from engine.atomic import write_table_atomic, write_text_atomic
    from indexing.shards import image_table

    if count <= 0:
        raise ConfigError(f"--count must be positive, got {count}")
    recipe = {"template": str(template.resolve()), "count": count, "noise": noise, "seed": seed,
              "shard_rows": SHARD_ROWS}
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists():
        stored = json.loads((out / RECIPE_FILE).read_text()) if (out / RECIPE_FILE).is_file() else None
        if stored != recipe:
            raise ConfigError(f"--out {out}: holds another synthetic index ({stored}); pass --overwrite")
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / RECIPE_FILE, json.dumps(recipe))
    source = load_index(template)
    meta, vectors, data_root = read_template(template)
    dim = vectors.shape[1]
    started = time.perf_counter()
    shards, reused = [], 0
    for number, first in enumerate(range(0, count, SHARD_ROWS)):
        rows_count, name = min(SHARD_ROWS, count - first), shard_name(number)
        shards.append(ShardInfo(file=f"{SHARDS_DIR}/{name}", text_file=None, rows=rows_count, text_rows=0,
                                first_id=first, last_id=first + rows_count - 1))
        if (out / SHARDS_DIR / name).exists():
            reused += 1
            continue
        rows = synthetic_rows(meta, vectors, first, rows_count, noise, np.random.default_rng([seed, number]))
        metadata = {"model_fingerprint": source.config.model_fingerprint, "embed_dim": str(dim),
                    "data_root": data_root, "shard_index": str(number), "synthetic_from": str(template)}
        write_table_atomic(out / SHARDS_DIR / name, image_table(rows, dim, metadata))
        print(f"shard {number}: ids {first}..{first + rows_count - 1}", flush=True)
    text_rows = copy_caption_shards(template, out, meta.num_rows)
    shard_seconds = time.perf_counter() - started
    built = build_faiss(out, dim, parse_memory(memory_budget), factory, "cpu", faiss_shards,
                        trained_cache=out / TRAINED_DIR)
    print(f"faiss {built.spec.factory} built in {built.seconds:.0f} s", flush=True)
    row_started = time.perf_counter()
    write_row_file(out)
    row_seconds = time.perf_counter() - row_started
    IndexConfig(model_fingerprint=source.config.model_fingerprint, model_spec=source.config.model_spec,
                embed_dim=dim, metric=built.spec.metric, factory=built.spec.factory,
                index_params=dict(built.spec.params), image_count=built.count, caption_count=text_rows, skipped_images=0,
                shards=shards, mask=MaskOptions(), data_roots=[data_root],
                build_seconds=round(time.perf_counter() - started, 3), built_on=built.device,
                tool_version=tool_version(),
                created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                calibration=asdict(built.calibration) if built.calibration is not None else None,
                test_time_views=source.config.test_time_views, faiss_shards=list(built.shard_files)).save(out)
    source.catalog.close()
    return {"count": built.count, "factory": built.spec.factory, "params": built.spec.params,
            "faiss_shards": faiss_shards, "calibration": built.calibration.describe() if built.calibration else "exact",
            "shards_reused": reused, "shard_seconds": round(shard_seconds, 1), "faiss_seconds": round(built.seconds, 1),
            "row_file_seconds": round(row_seconds, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def save_result(out: Path, result: dict) -> Path:
    """``docs/bench/synthetic_<out name>.json``: the build's numbers with date, machine and command (read by
    bench/shard_bench.py for its build line)."""
    from bench.machine import load_average, run_meta
    from engine.atomic import write_json_atomic

    path = REPO / "docs" / "bench" / f"synthetic_{out.resolve().name}.json"
    write_json_atomic(path, {"meta": run_meta(REPO), "load_after": load_average(), **result}, indent=1)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, required=True, help="a real index built with the model to query")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--noise", type=float, default=0.5, help="norm of the Gaussian noise added to a template row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", dest="factory", default=None, help="faiss factory string (default: automatic)")
    parser.add_argument("--memory-budget", default="16GB")
    parser.add_argument("--faiss-shards", type=int, default=1, help="split the faiss part (sharded serving)")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    args = parser.parse_args()
    try:
        result = build(args.template, args.count, args.out, args.noise, args.seed, args.factory, args.memory_budget,
                       args.faiss_shards, args.overwrite)
        print(result)
        save_result(args.out, result)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
