"""Reranking ablation on an index: none vs AAS vs PAR, recall and the latency each reranker costs.

On one split of the indexed dataset (UCM test), with the embeddings the index holds and its own faiss search
restricted to the split (:mod:`engine.evaluation.index_search`), first stage ``--rerank-depth`` deep:
- text→image: every caption is a query; R@1/5/10 and mR (image→text is exact and rerank-free, so mR moves only
  through text→image);
- image→image: every image queries the other images of the split; a hit is an image of the same class.
Rerank latency per query (the query engine's ``rerank`` call) is reported for the first text pass, which fills
the attention-feature cache (it is emptied first unless ``--keep-cache``), separately from a second, warm pass;
image queries run warm (their own features are extracted per query by design). Raw results go to
``docs/bench/rerank.json``; the ``rerank`` block of docs/ablations.md is rendered from them.

    python -m bench.rerank_ablation --index INDEX_DIR --data ../shared/data/ucm_captions [--rerank-depth 50]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from release.docs_blocks import markdown_table, update_page
from bench.machine import run_meta
from engine.atomic import write_json_atomic
from engine.errors import EngineError

REPO = Path(__file__).resolve().parents[1]

# (row label, reranker, RerankOptions overrides). par-bonus with PAR's paper gates (0.7), and at 0.5: see the docs.
VARIANTS = (("none", "none", {}), ("aas", "aas", {}), ("par-bonus", "par-bonus", {}),
            ("par-bonus, gates 0.5", "par-bonus", {"par_ccs": 0.5, "par_ascs": 0.5}))
KS = (1, 5, 10)


def _recalls(ranks, prefix: str) -> dict[str, float]:
    return {f"{prefix}_r{k}": float((ranks < k).mean() * 100) for k in KS}


def _clear_cache(engine, layer: int) -> None:
    """Empty the attention-feature cache (disk and memory) so the next pass measures filling it."""
    cache = engine.attention_cache(layer)
    shutil.rmtree(cache.folder, ignore_errors=True)
    cache.rows.clear()


def measure(index_dir: Path, data: Path, split: str, checkpoint: str | None, depth: int, keep_cache: bool) -> dict:

    from engine.data import load_dataset
    from engine.data.images import load_rgb
    from engine.evaluation.index_eval import IndexEvalOptions, index_description
    from engine.evaluation.index_search import (class_hit_ranks, latency_summary, rerank_lists, search_lists,
                                                target_ranks)
    from engine.evaluation.index_split import read_indexed_split
    from engine.metrics import RetrievalRanks, recalls_from_ranks, retrieval_ranks
    from engine.query.request import QueryRequest, RerankOptions
    from engine.query.engine import QueryEngine

    options = IndexEvalOptions(index_dir=index_dir, rerank="aas", rerank_depth=depth, ks=KS).validate()
    subset = load_dataset(data).split(split)
    if not subset.images:
        raise EngineError(f"{data}: no images in split {split!r}")
    engine = QueryEngine(index_dir, checkpoint)
    try:
        indexed = read_indexed_split(engine.store, subset, index_dir)
        emb, ids = indexed.embeddings, indexed.index_ids
        position_of = {int(image_id): row for row, image_id in enumerate(ids)}
        labels = [image.label for image in subset.images]
        label_of = {int(image_id): label for image_id, label in zip(ids, labels)}
        i2t = retrieval_ranks(emb.images, emb.texts, emb.text_to_image).image_to_text
        started = time.perf_counter()
        text_first = search_lists(engine.loaded.index, emb.texts, options.depth, ids, position_of)
        search_ms = (time.perf_counter() - started) * 1000 / len(emb.texts)
        image_first = search_lists(engine.loaded.index, emb.images, options.depth, ids, position_of, exclude=ids)
        rows = []
        for label, method, overrides in VARIANTS:
            settings = replace(RerankOptions(), **overrides)
            row: dict = {"method": label, "options": overrides,
                         "first_stage_search_ms_per_query": round(search_ms, 3)}
            text_lists, image_lists = text_first, image_first
            if method != "none":
                if not keep_cache:
                    _clear_cache(engine, settings.layer)
                text_requests = [QueryRequest(text=c.text, rerank=method, rerank_depth=depth, options=settings)
                                 for c in subset.captions]
                cold = rerank_lists(engine, text_first, text_requests, emb.texts)
                warm = rerank_lists(engine, text_first, text_requests, emb.texts)
                image_requests = [QueryRequest(image_path=str(image.path), rerank=method, rerank_depth=depth,
                                               options=settings) for image in subset.images]
                images = rerank_lists(engine, image_first, image_requests, emb.images,
                                      lambda i: engine.transform(load_rgb(subset.images[i].path)).unsqueeze(0))
                text_lists, image_lists = warm.lists, images.lists
                row.update(t2i_latency_first_pass=latency_summary(cold.latencies_ms),
                           t2i_images_encoded_first_pass=cold.images_encoded,
                           t2i_latency_warm=latency_summary(warm.latencies_ms),
                           i2i_latency=latency_summary(images.latencies_ms), notes=cold.notes + images.notes)
                if method == "par-bonus":
                    row["par_gate_pass"] = {
                        "t2i": warm.gated / max(warm.gate_candidates, 1),
                        "i2i": images.gated / max(images.gate_candidates, 1)}
            t2i = target_ranks(text_lists, ids[emb.text_to_image])
            row["text_image"] = recalls_from_ranks(RetrievalRanks(image_to_text=i2t, text_to_image=t2i), KS)
            row["image_to_image"] = _recalls(class_hit_ranks(image_lists, label_of, labels), "i2i")
            rows.append(row)
            print(f"{label}: t2i R@1 {row['text_image']['t2i_r1']:.2f}, i2i R@1 {row['image_to_image']['i2i_r1']:.2f}",
                  flush=True)
        return {"rows": rows, "index": index_description(engine), "depth": options.depth,
                "rerank_options": asdict(RerankOptions()),
                "model": {"spec": checkpoint or engine.loaded.config.model_spec, "fingerprint": engine.fingerprint},
                "data": {"root": str(data), "split": split, "images": len(subset.images),
                         "captions": len(subset.captions)}}
    finally:
        engine.close()


def _ms(summary: dict | None) -> str:
    return "—" if not summary else f"{summary['p50_ms']:.1f} / {summary['p95_ms']:.1f}"


def _gates(row: dict) -> str:
    gates = row.get("par_gate_pass")
    return "—" if not gates else f"{100 * gates['t2i']:.1f}% / {100 * gates['i2i']:.1f}%"


def render(result: dict) -> str:
    meta, data, index = result["meta"], result["data"], result["index"]
    headers = ["rerank", "T→I R@1", "T→I R@5", "T→I R@10", "mR", "I→I R@1", "I→I R@5", "I→I R@10",
               "T→I first pass ms p50/p95", "T→I warm ms p50/p95", "I→I ms p50/p95", "par-bonus gate pass T→I / I→I"]
    table = [[row["method"], *(f"{row['text_image'][f't2i_r{k}']:.2f}" for k in KS), f"{row['text_image']['mR']:.2f}",
              *(f"{row['image_to_image'][f'i2i_r{k}']:.2f}" for k in KS), _ms(row.get("t2i_latency_first_pass")),
              _ms(row.get("t2i_latency_warm")), _ms(row.get("i2i_latency")), _gates(row)] for row in result["rows"]]
    params = ", ".join(f"{key} {value}" for key, value in index["search_params"].items()) or "exact"
    return "\n".join([
        "## Reranking", "",
        f"Measured {meta['date']} on {meta['machine']} (load average {meta['load_average']}), commit "
        f"`{meta['commit']}`.", f"Command: `{meta['command']}`", "",
        f"Data: {data['root']}, {data['split']} split ({data['images']} images, {data['captions']} captions), "
        f"embeddings stored in index `{index['index_dir']}` (faiss `{index['factory']}`, {params}; mask "
        f"{index['mask']['mask_mode']}). Model `{result['model']['spec']}` (fingerprint "
        f"`{result['model']['fingerprint'][:16]}`). First stage: the index's search restricted to the split, "
        f"{result['depth']} deep; the rerankers rescore those {result['depth']} (engine query defaults, "
        "docs/query.md). Image→image: each image queries the other images, hit = same class. mR includes "
        "image→text, which reranking does not change. Latency: the rerank step alone, per query, in ms; the first "
        "text pass fills the attention cache, the warm pass reads it. par-bonus gate pass: the share of (query, "
        "candidate) pairs whose CCS and ASCS both exceed the gates (for text queries the references are the top "
        f"{result['rerank_options']['prf_references']} first-stage images, which pass against themselves).", "",
        markdown_table(headers, table), ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ucm_captions")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default=None, help="model folder (default: the model the index records)")
    parser.add_argument("--rerank-depth", type=int, default=50)
    parser.add_argument("--keep-cache", action="store_true", help="do not empty the attention cache first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "rerank.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "ablations.md")
    args = parser.parse_args()

    import torch


    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(args.index, args.data, args.split, args.checkpoint, args.rerank_depth, args.keep_cache)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result["meta"] = run_meta(REPO)
    write_json_atomic(args.out, result, indent=1)
    update_page(args.docs, "rerank", render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
