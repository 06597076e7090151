"""What the query bank costs when an engine opens an index: the images' offsets (computed once per index and bank,
then read back from ``query_bank_offsets.npz``) and the captions' offsets (on the first ``--target captions`` query).

    python -m bench.query_bank_startup --images 20000 100000

Random unit vectors stand in for the index's embeddings (the cost depends on the counts, not the values); the
bank is the shipped default's. Writes the ``query-bank-startup`` block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from release.docs_blocks import update_page

REPO = Path(__file__).resolve().parents[1]


class _Store:
    """The two reads BankOffsets makes of a MetadataStore, over an in-memory matrix."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    def image_ids(self) -> np.ndarray:
        return np.arange(len(self.matrix), dtype=np.int64)

    def embeddings_for(self, ids: np.ndarray):
        return ids, self.matrix[ids]


def measure(count: int, bank, seed: int = 0) -> dict:
    from engine.query.bank_offsets import BankOffsets

    rows = np.random.default_rng(seed).normal(size=(count, bank.texts.shape[1])).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    store = _Store(rows)
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "shards").mkdir()
        started = time.perf_counter()
        BankOffsets.load_or_compute(Path(folder), store, bank)
        computed = time.perf_counter() - started
        started = time.perf_counter()
        BankOffsets.load_or_compute(Path(folder), store, bank)
        reread = time.perf_counter() - started
    started = time.perf_counter()
    bank.text_offsets(rows)
    captions = time.perf_counter() - started
    return {"images": count, "compute_s": computed, "reread_s": reread, "caption_offsets_s": captions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20000, 100000])
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()

    import torch

    import encoders
    from bench.machine import command_line, machine_text
    from engine.evaluation.report import git_commit

    torch.set_num_threads(max(1, torch.get_num_threads()))
    bank = encoders.load_model(None).query_bank
    if bank is None:
        raise SystemExit("the shipped default has no query bank to measure")
    rows = [measure(count, bank) for count in args.images]
    described = bank.describe()
    lines = [f"Measured {time.strftime('%Y-%m-%d')} on {machine_text()}, commit `{git_commit(REPO)[:7]}`; the shipped "
             f"bank: {described['texts']:,} captions, {described['images']:,} images, β {described['beta']:g}.",
             f"Command: `{command_line()}`", "",
             "| indexed images | image offsets, first open (s) | later opens: read back (s) | "
             "the same number of captions' offsets (s) |", "|---|---|---|---|"]
    lines += [f"| {r['images']:,} | {r['compute_s']:.2f} | {r['reread_s']:.3f} | {r['caption_offsets_s']:.2f} |"
              for r in rows]
    text = "\n".join(lines) + "\n"
    update_page(args.docs, "query-bank-startup", "## Query bank at engine start (`bench/query_bank_startup.py`)\n"
                + text)
    print(text)


if __name__ == "__main__":
    main()
