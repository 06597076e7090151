"""QueryEngine: a loaded model + index answering QueryRequests (used by ``engine query`` and ``engine serve``).

Thread safety and speed: all torch work runs on one long-lived model thread (``run_model``), which also
serialises it; faiss searches are read-only and run concurrently; DuckDB is used through one cursor per thread
(MetadataStore). Why one thread: torch's OpenMP pool belongs to the calling thread and its idle workers spin, so
torch calls from several threads on a 2-core machine keep two pools fighting for the cores (the measured cost:
docs/benchmarks.md, "Measurements behind design choices").

The ``--where`` filter and the ``--bbox`` / ``--near`` place filter always run first, on the request's own thread
within their time budget (``filter_budget_s``), so a slow filter never holds the model thread or a batch. With a ``batch`` policy
(``engine serve``'s default) the model thread then encodes waiting queries together (``engine.query.batching``)
and the rest of a request — k-NN search, metadata — runs on the request's own thread, concurrently with the next
batch; reranking (torch) still runs on the model thread. Without one (``engine query``, ``engine serve --batch
off``) the rest of the search runs on the model thread.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine.errors import ConfigError, DataError
from engine.query.batching import BatchPolicy, EncodeBatcher
from engine.query.request import MAX_QUERY_CHARS, Hit, QueryRequest, QueryResult, validate_request
from engine.query.search import Neighbours, search_index, search_subset, top_k

DEFAULT_MODEL_SPEC = "default"
QUERY_THUMB_SIDE = 256


class QueryEngine:
    """Open ``index_dir`` with the model it was built with (or ``checkpoint``, which must be the same model).

    ``text_encoder``: ``eager`` (the model's own ``encode_text``), or the kind (auto | onnx | float32 | bfloat16)
    of a traced single-query text encoder (``encoders.query_text``): a few seconds more at start-up for less
    text-encoding time per query, so the warm server builds one and one-shot ``engine query`` does not. It is
    checked against the eager model at build time and falls back to it.

    ``batch``: encode concurrent queries in batches (``engine.query.batching``); None encodes one at a time.

    ``filter_budget_s``: the time budget of one ``--where`` filter (``indexing.filter_guard``); None: the
    default budget."""

    def __init__(self, index_dir: Path, checkpoint: str | None = None, device: str = "auto",
                 text_encoder: str = "eager", shard_backend: str = "local", ray_address: str = "auto",
                 batch: BatchPolicy | None = None, filter_budget_s: float | None = None,
                 query_bank: bool = True) -> None:
        import encoders
        from engine.devices import resolve_device
        from engine.query.metadata import MetadataStore
        from indexing.loader import load_index

        self.loaded = load_index(index_dir, shard_backend, ray_address)
        self.root = Path(index_dir)
        spec = checkpoint if checkpoint is not None else self.loaded.config.model_spec
        self.device = resolve_device(device)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-model")
        self._model_thread_id = self._model_thread.submit(threading.get_ident).result()

        def prepare():
            model = encoders.load_model(None if spec == DEFAULT_MODEL_SPEC else spec)
            if self.loaded.config.test_time_views is not None:  # image queries are encoded as the index's images
                model.set_test_time_views(self.loaded.config.test_time_views)
            model.to(self.device).eval()
            self.loaded.check_model(model)
            traced = None
            if text_encoder != "eager":
                from encoders.query_text import trace_query_encoder

                traced = trace_query_encoder(model, text_encoder)
            return model, model.fingerprint(), traced, _batch_text_encoder(model, text_encoder, batch)

        try:
            # not run_model: weights loaded under inference_mode would become inference tensors
            (self.model, self.fingerprint, self.text_query_encoder,
             self.batch_text_encoder) = self._model_thread.submit(prepare).result()
        except BaseException:
            self._model_thread.shutdown()
            self.loaded.close()
            raise
        self.transform = self.model.image_transform(train=False)
        self.store = MetadataStore(self.loaded.catalog, self.loaded.config)
        self.store.filter_budget_s = filter_budget_s
        # cross-modal scores minus each gallery item's query-bank offset when the model has a bank
        # (encoders.query_bank): images' offsets now (engine.query.bank_offsets), captions' with the caption matrix
        self.query_bank = self.model.query_bank if query_bank else None
        self.bank_offsets = None
        if self.query_bank is not None and self.query_bank.text_to_image:
            from engine.query.bank_offsets import BankOffsets

            self.bank_offsets = BankOffsets.load_or_compute(self.root, self.store, self.query_bank)
        self._captions = None
        self._captions_lock = threading.Lock()
        self._caches: dict[int, object] = {}
        self._caches_lock = threading.Lock()
        self._text_lanes = None
        self.text_lanes = 1  # threads encoding text batches at once (1: the model thread)
        self.batcher = None
        if batch is not None:
            on_model_thread = lambda function: self._model_thread.submit(_inference, function)  # noqa: E731
            submit = {"text": on_model_thread, "image": on_model_thread}
            self.text_lanes = text_lane_count(batch, self.text_query_encoder, self.batch_text_encoder)
            if self.text_lanes > 1:
                self._text_lanes = ThreadPoolExecutor(max_workers=self.text_lanes,
                                                      thread_name_prefix="engine-text")
                submit["text"] = lambda function: self._text_lanes.submit(_inference, function)
            self.batcher = EncodeBatcher(submit, {"text": self._encode_text_batch,
                                                  "image": self._encode_image_batch}, batch)

    @property
    def image_count(self) -> int:
        return int(self.loaded.index.ntotal)

    def close(self) -> None:
        if self._text_lanes is not None:
            self._text_lanes.shutdown(wait=True)
        self._model_thread.shutdown(wait=True)  # first: work queued on the model thread still reads the index
        self.loaded.close()

    def run_model(self, function, *args):
        """``function(*args)`` on the model thread, under ``torch.inference_mode``; returns its result.

        Re-entrant: called on the model thread itself, it runs the function directly."""
        if threading.get_ident() == self._model_thread_id:
            return _inference(function, *args)
        return self._model_thread.submit(_inference, function, *args).result()

    # ---- encoding ------------------------------------------------------------------------------------------
    def encode_text(self, text: str, notes: list[str]) -> np.ndarray:
        if len(text) > MAX_QUERY_CHARS:
            text = text[:MAX_QUERY_CHARS]
        batch = self.model.tokenize([text])
        encode = self.text_query_encoder or self.model.encode_text  # traced: less overhead, checked at start-up
        vector = self.run_model(lambda: encode(batch)[0].float().cpu().numpy())
        notes.extend(self._truncation_notes(text, int(batch.attention_mask.sum())))
        return vector

    def _truncation_notes(self, text: str, tokens: int) -> list[str]:
        limits = self.model.config.text
        if len(text.split()) > limits.max_words or tokens >= limits.max_tokens:
            return [f"warning: the query was truncated to the model's limit ({limits.max_words} words, "
                    f"{limits.max_tokens} tokens); the rest was ignored"]
        return []

    def _encode_text_batch(self, texts: list[str]) -> list[tuple[np.ndarray, list[str]]]:
        """(embedding, notes) per text, in one encoder call (on the model thread). One text takes the
        single-query path of ``encode_text``; more take the padded batch encoder."""
        texts = [text[:MAX_QUERY_CHARS] for text in texts]
        batch = self.model.tokenize(texts)
        if len(texts) == 1 or self.batch_text_encoder is None:
            encode = self.text_query_encoder or self.model.encode_text
        else:
            encode = self.batch_text_encoder.encode_batch
        vectors = encode(batch).float().cpu().numpy()
        tokens = batch.attention_mask.sum(dim=1).tolist()
        return [(vectors[row], self._truncation_notes(text, int(tokens[row]))) for row, text in enumerate(texts)]

    def _encode_image_batch(self, images: list) -> list[tuple[np.ndarray, object]]:
        """(embedding, (1, 3, S, S) pixels) per PIL image, in one encoder call (on the model thread)."""
        import torch

        pixels = torch.stack([self.transform(image) for image in images])
        vectors = self.model.encode_image(pixels.to(self.device)).float().cpu().numpy()
        return [(vectors[row], pixels[row:row + 1]) for row in range(len(images))]

    def load_query_image(self, request: QueryRequest):
        from engine.data.images import load_rgb

        if request.image is not None:
            return request.image
        if request.image_path is not None:
            return load_rgb(request.image_path)
        with tempfile.NamedTemporaryFile(suffix=".tif") as handle:
            handle.write(request.image_bytes or b"")
            handle.flush()
            try:
                return load_rgb(handle.name)
            except DataError as error:
                raise type(error)("uploaded image: " + str(error).replace(handle.name, "").lstrip(": ")) from None

    def encode_pixels(self, pixels) -> np.ndarray:
        return self.run_model(lambda: self.model.encode_image(pixels.to(self.device)).float().cpu().numpy())

    # ---- search --------------------------------------------------------------------------------------------
    def search(self, request: QueryRequest) -> QueryResult:
        """Answer one request. The ``--where`` and place filters run first on the calling thread (its own DuckDB cursor,
        within its time budget), so a slow filter never holds the model thread or a batch. Without batching the
        rest of the search runs on the model thread (torch transforms, encoding, rerank); with it the query is
        encoded there in a batch and the rest runs on this thread."""
        validate_request(request)
        began = time.perf_counter()
        allowed = self.prefilter(request)
        filtered_ms = (time.perf_counter() - began) * 1000
        if self.batcher is not None:
            return self._search_batched(request, allowed, filtered_ms)
        return self.run_model(self._search, request, allowed, filtered_ms)

    def prefilter(self, request: QueryRequest) -> np.ndarray | None:
        """Sorted ids allowed by the ``--where`` filter AND the ``--bbox`` / ``--near`` place filter (None: no
        filter), on this thread. Both share one time budget (``filter_budget_s``): the place filter gets what
        the ``--where`` filter left of it."""
        if request.where is None and request.place is None:
            return None
        began = time.perf_counter()
        allowed = self.store.filter_ids(request.where) if request.where is not None else None
        if request.place is None or (allowed is not None and len(allowed) == 0):
            return allowed
        budget = self.store.filter_budget_s
        if budget is None:
            from indexing.filter_guard import DEFAULT_FILTER_BUDGET_S

            budget = DEFAULT_FILTER_BUDGET_S
        if budget > 0:  # 0: no limit
            budget = max(budget - (time.perf_counter() - began), 0.001)
        placed = self.store.place_ids(request.place, budget)
        return placed if allowed is None else np.intersect1d(allowed, placed, assume_unique=True)

    def _search_batched(self, request: QueryRequest, allowed=None, filtered_ms: float = 0.0) -> QueryResult:
        """Encode in a batch with other requests' queries, then search on this thread (rerank: model thread)."""
        started = time.perf_counter()
        result = QueryResult(query=request.describe(), target=request.target, k=request.k, where=request.where,
                             rerank=request.rerank)
        if request.is_image:
            def prepare():
                image = self.load_query_image(request)
                result.query_image_jpeg = _thumbnail_jpeg(image)
                result.timings_ms["decode"] = (time.perf_counter() - started) * 1000
                return image

            encoded = self.batcher.encode("image", prepare)
            vector, pixels = encoded.output
        else:
            encoded = self.batcher.encode("text", lambda: request.text or "")
            (vector, notes), pixels = encoded.output, None
            result.notes.extend(notes)
        result.timings_ms.update(queue=encoded.queue_ms, encode=encoded.encode_ms)
        result.encode_batch = encoded.batch_size
        if request.rerank == "none":
            return self._search_encoded(vector, pixels, request, result, started, allowed, filtered_ms)
        return self.run_model(self._search_encoded, vector, pixels, request, result, started, allowed, filtered_ms)

    def _search(self, request: QueryRequest, allowed=None, filtered_ms: float = 0.0) -> QueryResult:
        started = time.perf_counter()
        result = QueryResult(query=request.describe(), target=request.target, k=request.k, where=request.where,
                             rerank=request.rerank)
        pixels = None
        if request.is_image:
            image = self.load_query_image(request)
            result.query_image_jpeg = _thumbnail_jpeg(image)
            pixels = self.transform(image).unsqueeze(0)
            vector = self.encode_pixels(pixels)[0]
        else:
            vector = self.encode_text(request.text or "", result.notes)
        result.timings_ms["encode"] = (time.perf_counter() - started) * 1000
        return self._search_encoded(vector, pixels, request, result, started, allowed, filtered_ms)

    def _search_encoded(self, vector: np.ndarray, pixels, request: QueryRequest, result: QueryResult,
                        started: float, allowed=None, filtered_ms: float = 0.0) -> QueryResult:
        """k-NN search, rerank and metadata of an encoded query (either thread), within the ids ``allowed`` by
        the ``--where`` filter that ``search`` ran first (``filtered_ms``: its time, counted in the total)."""
        if request.place is not None:
            result.place = request.place.describe()
        if allowed is not None:
            result.timings_ms["filter"] = filtered_ms
            if len(allowed) == 0:
                if request.place is None:
                    result.notes.append(f"no image matches --where {request.where!r}: nothing to search")
                else:
                    result.notes.append(f"no chip matches {result.place}"
                                        + (f" and --where {request.where!r}" if request.where else "")
                                        + ": nothing to search")
                result.timings_ms["total"] = (time.perf_counter() - started) * 1000 + filtered_ms
                return result
        if request.target == "captions":
            self._search_captions(vector, request, allowed, result)
        else:
            self._search_images(vector, pixels, request, allowed, result)
        if self.store.catalog.has_geo:
            from dataclasses import replace

            from engine.query.geo_filter import geo_rows

            located = geo_rows(self.store, [hit.image_id for hit in result.hits])
            result.hits = [replace(hit, geo=located.get(hit.image_id)) for hit in result.hits]
        result.timings_ms["total"] = (time.perf_counter() - started) * 1000 + filtered_ms
        return result

    def _clamped_k(self, request: QueryRequest, available: int, what: str, result: QueryResult) -> int:
        if request.k > available:
            result.notes.append(f"-k {request.k} is more than the {available} {what} searchable; "
                                f"returning all {available}")
            return available
        return request.k

    def _search_images(self, vector: np.ndarray, pixels, request: QueryRequest, allowed, result: QueryResult) -> None:
        available = self.image_count if allowed is None else len(allowed)
        what = "indexed images" if allowed is None else "images matching --where"
        k = self._clamped_k(request, available, what, result)
        depth = max(k, request.rerank_depth) if request.rerank != "none" else k
        began = time.perf_counter()
        if allowed is None:
            search = lambda count: search_index(self.loaded.index, vector, count)  # noqa: E731
        else:
            search = lambda count: search_subset(self.loaded.index, vector, count, allowed, self.store)  # noqa: E731
        if self.bank_offsets is not None and not request.is_image:
            from engine.query.bank_offsets import normalised_top_k

            first = normalised_top_k(search, depth, available, self.bank_offsets)
        else:
            first = search(depth)
        result.timings_ms["search"] = (time.perf_counter() - began) * 1000
        scores = first.scores.astype(np.float64)
        if request.rerank != "none" and len(first.ids):
            from engine.query.rerank.apply import rerank

            began = time.perf_counter()
            scores = rerank(self, request, first, vector, pixels, result.notes)
            result.timings_ms["rerank"] = (time.perf_counter() - began) * 1000
        order = np.lexsort((first.ids, -scores))[:k]
        rows = self.store.rows_for([int(first.ids[i]) for i in order])
        for rank, position in enumerate(order, start=1):
            image_id = int(first.ids[position])
            row = rows.get(image_id)
            if row is None:
                raise ConfigError(f"{self.root}: image id {image_id} is in faiss.index but not in the shards; "
                                  "rebuild the index")
            result.hits.append(Hit(rank, float(scores[position]), float(first.scores[position]), image_id,
                                   row.path, row.split, row.label, row.captions))

    def _search_captions(self, vector: np.ndarray, request: QueryRequest, allowed, result: QueryResult) -> None:
        caption_ids, image_ids, texts, matrix, offsets = self.caption_matrix()
        rows = np.arange(len(caption_ids))
        if allowed is not None:
            rows = rows[np.isin(image_ids, allowed)]
        what = "captions" if allowed is None else "captions of images matching --where"
        k = self._clamped_k(request, len(rows), what, result)
        began = time.perf_counter()
        scores = matrix[rows] @ vector
        if offsets is not None and request.is_image:  # image→text: minus each caption's query-bank offset
            scores = scores - offsets[rows]
        best: Neighbours = top_k(rows, scores, k, "exact-captions")
        result.timings_ms["search"] = (time.perf_counter() - began) * 1000
        metadata = self.store.rows_for(sorted({int(image_ids[row]) for row in best.ids}))
        for rank, (row, score) in enumerate(zip(best.ids, best.scores), start=1):
            meta = metadata[int(image_ids[row])]
            result.hits.append(Hit(rank, float(score), float(score), meta.image_id, meta.path, meta.split,
                                   meta.label, meta.captions, caption_id=int(caption_ids[row]), text=texts[row]))

    def caption_matrix(self):
        """(caption ids, image ids, texts, embeddings, query-bank offsets or None), loaded on first use."""
        with self._captions_lock:
            if self._captions is None:
                caption_ids, image_ids, texts, matrix = self.store.caption_matrix()
                offsets = None
                if self.query_bank is not None and self.query_bank.image_to_text:
                    from engine.query.bank_offsets import caption_offsets

                    offsets = caption_offsets(self.root, self.query_bank, caption_ids, matrix)
                self._captions = (caption_ids, image_ids, texts, matrix, offsets)
            return self._captions

    def attention_cache(self, layer: int):
        from engine.query.rerank.features import AttentionCache

        with self._caches_lock:
            if layer not in self._caches:
                self._caches[layer] = AttentionCache(self.root, layer, self.fingerprint)
            return self._caches[layer]


def _batch_text_encoder(model, text_encoder: str, batch: BatchPolicy | None):
    """The padded-batch text encoder behind batched queries: ONNX Runtime on the query thread count when the
    single-query encoder is compiled and ONNX is faithful (``encoders.batch_text`` checks it), else eager."""
    if batch is None:
        return None
    from encoders.batch_text import build_batch_text_encoder
    from encoders.query_encoder import QUERY_THREADS

    built = None
    if text_encoder != "eager":
        built = build_batch_text_encoder(model, "onnx", threads=QUERY_THREADS)
    return built or build_batch_text_encoder(model, "eager")


def text_lane_count(batch: BatchPolicy, single, batched) -> int:
    """How many threads encode text batches: the policy's ``text_lanes`` (0: one per core) when both text encoders
    are ONNX Runtime sessions (which run on the calling thread and may run concurrently), else 1 (the model
    thread: torch must stay there)."""
    if getattr(single, "kind", None) != "onnx" or getattr(batched, "kind", None) != "onnx":
        return 1
    from engine.devices import usable_cores

    return batch.text_lanes or usable_cores()


def _inference(function, *args):
    import torch

    with torch.inference_mode():
        return function(*args)


def _thumbnail_jpeg(image) -> bytes:
    copy = image.copy()
    copy.thumbnail((QUERY_THUMB_SIDE, QUERY_THUMB_SIDE))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
