"""``engine eval --index``: score the embeddings an index holds (e.g. a masked index) with the index's own search.

- image→text: exact, over the caption embeddings stored in the index (text shards); there is no caption ANN index.
- text→image: the index's faiss search, restricted to the split's images, ``depth = max(K)`` deep (with
  ``--rerank``: ``max(max K, --rerank-depth)``); a caption whose image is not returned is a miss at every K.
  The result names the faiss factory and the search parameters; it is exact only for a Flat index.
- ``--rerank aas|par-bonus``: the first-stage lists are rescored by the query engine's rerankers (defaults of
  :class:`engine.query.request.RerankOptions`), and the latency of every rerank call is recorded.
The index must have been built with the loaded model (fingerprint check), otherwise the numbers would mix models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.data.model import Dataset
from engine.errors import ConfigError
from engine.metrics import DEFAULT_KS, RetrievalRanks, recall_intervals, recalls_from_ranks, retrieval_ranks
from engine.query.request import DEFAULT_RERANK_DEPTH, MAX_RERANK_DEPTH, RERANKERS, RerankOptions

DEFAULT_MODEL_SPEC = "default"  # QueryEngine's name for the shipped model


@dataclass(frozen=True)
class IndexEvalOptions:
    index_dir: Path
    rerank: str = "none"
    rerank_depth: int = DEFAULT_RERANK_DEPTH
    rerank_options: RerankOptions = field(default_factory=RerankOptions)
    ks: tuple[int, ...] = DEFAULT_KS
    query_bank: bool = True  # apply the model's query bank to text→image, as engine query does
    bootstrap: int = 0  # image-bootstrap draws for the recalls' intervals (engine.metrics.recall_intervals); 0: none

    def validate(self) -> "IndexEvalOptions":
        if self.rerank not in RERANKERS:
            raise ConfigError(f"--rerank: expected one of {', '.join(RERANKERS)}, got {self.rerank!r}")
        if self.bootstrap < 0:
            raise ConfigError(f"--bootstrap must be 0 (no interval) or a number of draws, got {self.bootstrap}")
        if not 1 <= self.rerank_depth <= MAX_RERANK_DEPTH:
            raise ConfigError(f"--rerank-depth must be within 1..{MAX_RERANK_DEPTH}, got {self.rerank_depth}")
        self.rerank_options.validate()
        return self

    @property
    def depth(self) -> int:
        """How many images each caption's search returns (never fewer than the largest K)."""
        return max(max(self.ks), self.rerank_depth) if self.rerank != "none" else max(self.ks)


@dataclass
class IndexEvaluation:
    recalls: dict[str, float]
    recalls_pessimistic: dict[str, float]
    search: dict
    fingerprint: str
    interval: dict = field(default_factory=dict)  # of ``recalls`` (engine.metrics.recall_intervals)
    ranks: RetrievalRanks | None = None  # behind ``recalls`` (split order ties)
    text_to_image: np.ndarray | None = None  # the split position of each caption's image


def open_engine(index_dir: Path, checkpoint: str | None, device: str, query_bank: bool = True):
    """A QueryEngine over ``index_dir`` with the model eval would load (refused if the index is of another)."""
    from engine.query.engine import QueryEngine

    return QueryEngine(Path(index_dir), checkpoint if checkpoint is not None else DEFAULT_MODEL_SPEC, device,
                       query_bank=query_bank)


def index_description(engine) -> dict:
    """Factory, search parameters and whether the search is exact, as a result file records them."""
    from indexing.faiss_search import search_parameters

    config = engine.loaded.config
    params = search_parameters(engine.loaded.index)
    inner = config.factory.replace(" ", "").removeprefix("IDMap2,").removeprefix("IDMap,")
    return {"index_dir": str(Path(engine.root).resolve()), "factory": config.factory, "search_params": params,
            "exact": inner == "Flat",
            "metric": config.metric, "index_images": config.image_count, "mask": config.mask.describe(),
            "test_time_views": config.test_time_views}


def evaluate_on_index(subset: Dataset, checkpoint: str | None, options: IndexEvalOptions,
                      device: str = "auto") -> IndexEvaluation:
    from engine.evaluation.index_search import latency_summary, rerank_lists, search_lists, target_ranks
    from engine.evaluation.index_split import read_indexed_split
    from engine.query.request import QueryRequest

    options.validate()
    engine = open_engine(options.index_dir, checkpoint, device, options.query_bank)
    try:
        split = read_indexed_split(engine.store, subset, options.index_dir)
        emb = split.embeddings
        position_of = {int(image_id): row for row, image_id in enumerate(split.index_ids)}
        owners = split.index_ids[emb.text_to_image]
        if engine.bank_offsets is None:
            first = search_lists(engine.loaded.index, emb.texts, options.depth, split.index_ids, position_of)
        else:  # what engine query does with the model's query bank: one normalised search per caption
            from engine.query.bank_offsets import normalised_top_k

            first = [normalised_top_k(
                lambda depth, query=query: search_lists(engine.loaded.index, query[None], depth, split.index_ids,
                                                        position_of)[0],
                options.depth, len(split.index_ids), engine.bank_offsets) for query in emb.texts]
        lists, rerank_info = first, {"method": "none"}
        if options.rerank != "none":
            requests = [QueryRequest(text=caption.text, rerank=options.rerank, rerank_depth=options.rerank_depth,
                                     options=options.rerank_options) for caption in subset.captions]
            run = rerank_lists(engine, first, requests, emb.texts)
            lists = run.lists
            rerank_info = {"method": options.rerank, "depth": options.depth,  # raised to max K, as -k raises it
                           "options": asdict(options.rerank_options), "latency_per_query": latency_summary(run.latencies_ms),
                           "latency_warm_queries": latency_summary(run.latencies_ms[~run.cold]),
                           "queries_filling_cache": int(run.cold.sum()), "images_encoded": run.images_encoded,
                           "notes": run.notes}
        recalls, pessimistic, interval = {}, {}, {}
        from encoders.query_bank import with_offset_columns

        bank = engine.query_bank
        image_rows, text_rows = with_offset_columns(emb.images, emb.texts, bank)  # image→text as engine query does
        for ties, out in (("index", recalls), ("pessimistic", pessimistic)):
            exact = retrieval_ranks(image_rows, text_rows, emb.text_to_image, ties=ties)
            ranks = RetrievalRanks(image_to_text=exact.image_to_text,
                                   text_to_image=target_ranks(lists, owners, pessimistic=ties == "pessimistic"))
            out.update(recalls_from_ranks(ranks, options.ks))
            if ties == "index":
                kept = ranks
                if options.bootstrap:
                    interval = recall_intervals(ranks, emb.text_to_image, options.bootstrap, ks=options.ks)
        returned = np.array([len(found.ids) for found in first])
        search = {"mode": "index", **index_description(engine), "depth": options.depth,
                  "t2i": "faiss search of the index restricted to the split's images; a caption whose image is "
                         "not among the returned depth counts as a miss",
                  "t2i_short_lists": int((returned < min(options.depth, len(split.index_ids))).sum()),
                  "i2t": "exact over the caption embeddings stored in the index",
                  "similarity": "inner product of the stored L2-normalised embeddings" + (
                      "; minus each gallery item's query-bank offset" if engine.query_bank is not None else ""),
                  "query_bank": engine.query_bank.describe() if engine.query_bank is not None else None,
                  "rerank": rerank_info}
        return IndexEvaluation(recalls, pessimistic, search, engine.fingerprint, interval, kept, emb.text_to_image)
    finally:
        engine.close()
