"""Does the server's compiled text encoder rank like ``engine eval``? Text→image recalls on one split, four ways.

The warm server encodes text queries with ``encoders.query_text`` (ONNX Runtime float32, or a TorchScript graph
with a float32 or bfloat16 text backbone). This script scores every caption of a split against the images'
embeddings stored in an index, with query vectors from (1) the eager model (what ``engine eval`` uses), (2) the
ONNX Runtime graph (when onnxruntime is installed), (3) the TorchScript float32 graph, (4) the TorchScript
bfloat16 graph, and reports text→image Recall@1/5/10, the worst cosine to the eager vector and the time per query, all
measured in the same run.

    python -m bench.text_precision_check --index /tmp/ucm-index --data ../shared/data/ucm_captions --split test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "text_precision.json")
    args = parser.parse_args()

    import torch

    from encoders.query_text import trace_query_encoder
    from engine.data import load_dataset
    from engine.evaluation.index_split import read_indexed_split
    from engine.metrics import recalls_from_ranks, retrieval_ranks
    from engine.query.engine import QueryEngine
    from bench.machine import command_line, run_meta
    from engine.atomic import write_json_atomic

    engine = QueryEngine(args.index, device="cpu")
    try:
        subset = load_dataset(args.data).split(args.split)
        stored = read_indexed_split(engine.store, subset, args.index).embeddings
        texts = [caption.text for caption in subset.captions]
        model = engine.model
        encoders = {"eager float32": lambda batch: model.encode_text(batch)}
        for kind in ("onnx", "float32", "bfloat16"):
            compiled = engine.run_model(trace_query_encoder, model, kind)
            if compiled is not None:  # None: not installed here, or refused by its fidelity check
                encoders[compiled.runtime] = compiled
        rows, reference = {}, None
        for name, encode in encoders.items():
            vectors, times = [], []
            for text in texts:
                batch = model.tokenize([text])
                started = time.perf_counter()
                vectors.append(engine.run_model(lambda: encode(batch)[0].float().numpy()))
                times.append((time.perf_counter() - started) * 1000)
            matrix = np.stack(vectors).astype(np.float32)
            reference = matrix if reference is None else reference
            ranks = retrieval_ranks(stored.images, matrix, stored.text_to_image)
            recalls = recalls_from_ranks(ranks)
            rows[name] = {"t2i": {k: recalls[k] for k in ("t2i_r1", "t2i_r5", "t2i_r10")},
                          "min_cosine_to_eager": float((matrix * reference).sum(axis=1).min()),
                          "ms_per_query_p50": float(np.percentile(times, 50)), "queries": len(texts),
                          "torch_threads": torch.get_num_threads()}
            print(name, json.dumps(rows[name]), flush=True)
    finally:
        engine.close()
    write_json_atomic(args.out, {"meta": run_meta(REPO), "index": str(args.index), "data": str(args.data),
                                 "split": args.split, "rows": rows,
                                 "command": command_line()}, indent=1)


if __name__ == "__main__":
    main()
