"""CPU cost per text query of one batched encoder call against single-query calls (the server's two paths).

    python -m bench.query_batch_cpu --index INDEX_DIR [--batches 1 4 8 16] [--rounds 40] [--text-encoder onnx]

Both run on the engine's model thread and are timed in that thread's CPU time (``time.thread_time``), not wall
time, so a busy machine that preempts the thread inflates neither; the two are interleaved round by round.
Queries are captions stored in the index (distinct sentences of ordinary length). Prints a markdown table:
batch size, padded shape, median CPU ms per query for single calls and for the batch, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def measure(index: Path, batches: list[int], rounds: int, text_encoder: str) -> list[dict]:
    from bench.load_soak import index_sentences
    from engine.query.batching import BatchPolicy
    from engine.query.engine import QueryEngine

    texts, _ = index_sentences(index, max(batches) + 12)
    texts = texts[12:]  # the stored captions, not the short fixed queries
    engine = QueryEngine(index, device="cpu", text_encoder=text_encoder, batch=BatchPolicy())
    single = engine.text_query_encoder or engine.model.encode_text

    def run() -> list[dict]:
        rows = []
        for size in batches:
            alone = [engine.model.tokenize([text]) for text in texts[:size]]
            together = engine.model.tokenize(texts[:size])
            single_ms, batch_ms = [], []
            for _ in range(rounds):
                began = time.thread_time()
                for batch in alone:
                    single(batch)
                single_ms.append((time.thread_time() - began) * 1000 / size)
                began = time.thread_time()
                engine.batch_text_encoder.encode_batch(together)
                batch_ms.append((time.thread_time() - began) * 1000 / size)
            rows.append({"batch": size, "shape": list(together.input_ids.shape),
                         "single_ms_per_query": round(statistics.median(single_ms), 2),
                         "batch_ms_per_query": round(statistics.median(batch_ms), 2)})
        return rows

    try:
        return engine.run_model(run)
    finally:
        engine.close()


def markdown(rows: list[dict]) -> str:
    lines = ["| queries | padded shape | single calls, CPU ms/query | one batched call, CPU ms/query | ratio |",
             "|---:|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['batch']} | {row['shape'][0]}×{row['shape'][1]} | {row['single_ms_per_query']:.2f} | "
                     f"{row['batch_ms_per_query']:.2f} | "
                     f"{row['single_ms_per_query'] / row['batch_ms_per_query']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--text-encoder", default="onnx", help="engine serve --text-encoder of both paths")
    args = parser.parse_args()
    print(markdown(measure(args.index, args.batches, args.rounds, args.text_encoder)))


if __name__ == "__main__":
    main()
