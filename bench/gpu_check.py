"""The Python checks of bench/gpu_check.sh: GPU results against CPU results, with a CPU fallback for machines
without a GPU (the fallback runs the "GPU" side on the CPU, so the comparison code itself is exercised).

    python -m bench.gpu_check faiss --vectors 1000000 [--cpu-fallback]
    python -m bench.gpu_check embeddings --index INDEX_DIR --sample 256 [--cpu-fallback]

``faiss``: synthetic L2-normalised vectors (dim 128, clustered); an exact ``Flat`` index and an ``IVF4096,Flat``
index built on the GPU (``faiss.index_cpu_to_gpu``) and on the CPU; the GPU Flat top-10 must agree with the CPU
Flat top-10 (overlap >= 0.999: float sums differ in the last bits, so near-ties may swap), and the GPU IVF recall@10
against exact search must be within 0.02 of the CPU IVF recall at the same nprobe (their k-means differ).
``embeddings``: a sample of the images stored in an index built with ``--device cuda`` is re-encoded on the CPU
with the same model (eager float32); every stored embedding must have cosine >= 0.9999 with its CPU one.
Each check prints one JSON line (what the shell script collects) and exits non-zero when it fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

DIM = 128
K = 10
QUERIES = 1000
IVF_LISTS = 4096
NPROBE = 32
FLAT_AGREEMENT_MIN = 0.999
IVF_RECALL_SLACK = 0.02
EMBEDDING_MIN_COSINE = 0.9999


def synthetic(count: int, seed: int = 0, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, count)] + 0.7 * rng.standard_normal((count, DIM), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a.tolist(), b.tolist())]))


def _to_device(index, gpu: bool):
    import faiss

    if not gpu:
        return index, None
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, 0, index), resources


def check_faiss(vectors_count: int, cpu_fallback: bool, lists: int = IVF_LISTS) -> dict:
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    gpu = gpus > 0 and not cpu_fallback
    if not gpu and not cpu_fallback:
        raise SystemExit("faiss sees no GPU (is faiss-gpu-cu12 installed and a CUDA device visible?); "
                         "use --cpu-fallback to test the script without one")
    base = synthetic(vectors_count)
    queries = synthetic(QUERIES, seed=1)
    timings = {}
    cpu_flat = faiss.IndexFlatIP(DIM)
    cpu_flat.add(base)
    started = time.perf_counter()
    _, exact = cpu_flat.search(queries, K)
    timings["cpu_flat_search_s"] = time.perf_counter() - started
    device_flat, _resources = _to_device(faiss.IndexFlatIP(DIM), gpu)
    started = time.perf_counter()
    device_flat.add(base)
    _, device_exact = device_flat.search(queries, K)
    timings["device_flat_add_search_s"] = time.perf_counter() - started
    flat_agreement = overlap(exact, device_exact)
    recalls = {}
    for side, on_gpu in (("cpu", False), ("device", gpu)):
        index = faiss.index_factory(DIM, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
        index, resources = _to_device(index, on_gpu)
        started = time.perf_counter()
        index.train(base[: min(len(base), 256 * 1024)])
        index.add(base)
        timings[f"{side}_ivf_train_add_s"] = time.perf_counter() - started
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", NPROBE)
        started = time.perf_counter()
        _, found = index.search(queries, K)
        timings[f"{side}_ivf_search_s"] = time.perf_counter() - started
        recalls[side] = overlap(exact, found)
        del index, resources
    passed = flat_agreement >= FLAT_AGREEMENT_MIN and recalls["device"] >= recalls["cpu"] - IVF_RECALL_SLACK
    return {"check": "faiss", "device": "cuda" if gpu else "cpu (fallback)", "vectors": vectors_count,
            "flat_top10_agreement": round(flat_agreement, 5), "ivf_recall_cpu": round(recalls["cpu"], 4),
            "ivf_recall_device": round(recalls["device"], 4), "ivf_lists": lists, "nprobe": NPROBE,
            "seconds": {name: round(value, 3) for name, value in timings.items()}, "passed": passed}


def check_embeddings(index_dir: Path, sample: int, cpu_fallback: bool) -> dict:
    import torch

    from engine.data.images import load_rgb
    from indexing.encode import load_encoder
    from indexing.loader import load_index
    from indexing.shards import embeddings_of, read_columns, read_metadata, shard_files

    loaded = load_index(index_dir)
    config = loaded.config
    loaded.close()
    if config.built_on != "cuda" and not cpu_fallback:
        raise SystemExit(f"{index_dir}: built on {config.built_on}, not cuda; build it with --device cuda")
    files = shard_files(index_dir)
    table = read_columns(files[0], ["image_id", "path", "embedding"])
    root = Path(read_metadata(files[0])["data_root"])
    rows = np.linspace(0, table.num_rows - 1, min(sample, table.num_rows)).astype(int)
    stored = embeddings_of(table)[rows]
    paths = [root / table.column("path")[int(row)].as_py() for row in rows]
    model = load_encoder(None if config.model_spec == "default" else config.model_spec, torch.device("cpu"))
    if config.test_time_views is not None:
        model.set_test_time_views(config.test_time_views)
    if model.fingerprint() != config.model_fingerprint:
        raise SystemExit(f"{index_dir}: built with another model than {config.model_spec}")
    transform = model.image_transform(train=False)
    started = time.perf_counter()
    with torch.inference_mode():
        cpu = torch.cat([model.encode_image(torch.stack([transform(load_rgb(path)) for path in paths[start:start + 32]]))
                         for start in range(0, len(paths), 32)]).numpy()
    cosines = np.sum(cpu * stored, axis=1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(stored, axis=1)
    return {"check": "embeddings", "index": str(index_dir), "built_on": config.built_on, "images": len(rows),
            "min_cosine": round(float(cosines.min()), 7), "mean_cosine": round(float(cosines.mean()), 7),
            "cpu_encode_s": round(time.perf_counter() - started, 2),
            "passed": bool(cosines.min() >= EMBEDDING_MIN_COSINE)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)
    faiss_parser = sub.add_parser("faiss")
    faiss_parser.add_argument("--vectors", type=int, default=1_000_000)
    faiss_parser.add_argument("--lists", type=int, default=IVF_LISTS, help="IVF lists (nlist)")
    faiss_parser.add_argument("--cpu-fallback", action="store_true")
    embed_parser = sub.add_parser("embeddings")
    embed_parser.add_argument("--index", type=Path, required=True)
    embed_parser.add_argument("--sample", type=int, default=256)
    embed_parser.add_argument("--cpu-fallback", action="store_true")
    args = parser.parse_args()
    if args.check == "faiss":
        result = check_faiss(args.vectors, args.cpu_fallback, args.lists)
    else:
        result = check_embeddings(args.index, args.sample, args.cpu_fallback)
    print(json.dumps(result), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
