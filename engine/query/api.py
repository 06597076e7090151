"""The Python API: ``engine.open(index)`` gives an ``Index`` to search from a notebook or a program.

    import engine
    with engine.open("runs/idx") as ix:
        table = ix.search("airport with runways", k=10, where="split = 'test'", rerank="aas")
        table.to_pandas()

It is the query engine of ``engine query`` and ``engine serve``, not a copy: ``open_engine`` is how all three
open an index (the same index resolution and checks), and every search is ``QueryEngine.search`` on a
``QueryRequest``; only the result's shape differs (a pyarrow Table here, a rich table or JSON there).
Thread-safe (the engine runs torch on its one model thread); ``close()`` (or leaving the ``with`` block)
releases the model thread and the index. Mistakes raise ``EngineError`` with one line naming the argument.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from engine.errors import ConfigError, DataError, EngineError
from engine.query.request import DEFAULT_K, DEFAULT_RERANK_DEPTH, QueryRequest, QueryResult, RerankOptions

RESULT_COLUMNS = ("id", "score", "path", "class", "captions")
CAPTION_COLUMNS = ("caption_id", "caption")
EMBED_BATCH = 32


def open_engine(index: Path | str | None, **options):
    """The QueryEngine over ``index`` (None: this project's last index, else the default one, said on stderr).

    The one opener of ``engine query``, ``engine serve`` and ``engine.open``; ``options`` go to QueryEngine."""
    import sys

    from engine.query.engine import QueryEngine
    from engine.query.state import resolve_index
    from indexing.manifest import check_index_folder

    folder, chosen = resolve_index(Path(index) if index is not None else None)
    check_index_folder(folder)
    if chosen is not None:
        print(f"note: {chosen}", file=sys.stderr)
    return QueryEngine(folder, **options)


def open_index(index: Path | str | None = None, *, model: str | None = None, device: str = "auto",
               text_encoder: str = "eager", batch: bool = False, filter_timeout: float | None = None,
               query_bank: bool = True) -> "Index":
    """An open Index (see ``Index``); ``model`` overrides the index's own (it must be the same model)."""
    from engine import preflight

    if index is not None and not isinstance(index, (str, Path)):
        raise ConfigError(f"index must be a folder path (str or Path), got {type(index).__name__}")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"model must be a model name or folder (str), got {type(model).__name__}")
    preflight.check_device(device)
    preflight.check_checkpoint_folder(model, "model")
    from encoders.query_text import TEXT_ENCODER_KINDS

    if text_encoder not in (*TEXT_ENCODER_KINDS, "eager"):
        raise ConfigError(f"text_encoder must be one of eager, {', '.join(TEXT_ENCODER_KINDS)}, got {text_encoder!r}")
    if filter_timeout is not None and (isinstance(filter_timeout, bool) or not isinstance(filter_timeout, (int, float))
                                       or not filter_timeout >= 0):
        raise ConfigError(f"filter_timeout must be 0 (no limit) or a number of seconds, got {filter_timeout!r}")
    if not isinstance(query_bank, bool):
        raise ConfigError(f"query_bank must be True or False, got {query_bank!r}")
    policy = None
    if batch:
        from engine.query.batching import BatchPolicy

        policy = BatchPolicy()
    return Index(open_engine(index, checkpoint=model, device=device, text_encoder=text_encoder, batch=policy,
                             filter_budget_s=None if filter_timeout is None else float(filter_timeout),
                             query_bank=query_bank))


def load_model(name: str | None = None):
    """A PIR model in eval mode: None or ``default`` is the shipped default, else a shipped name or a folder."""
    from engine import preflight

    if name is not None and not isinstance(name, (str, Path)):
        raise ConfigError(f"model name must be a string or a folder path, got {type(name).__name__}")
    name = None if name in (None, "default") else str(name)
    preflight.check_checkpoint_folder(name, "model")
    import encoders

    return encoders.load_model(name)


class Index:
    """A searchable index with its model loaded; use ``engine.open`` to make one."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self._state = threading.Condition()
        self._closed = False
        self._active = 0  # calls in progress; close() waits for them

    # ---- life cycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the model thread and the index once the calls in progress (other threads') have returned;
        later calls raise EngineError. Safe to call twice."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            while self._active:
                self._state.wait()
        self._engine.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} images, model {self._engine.fingerprint[:12]}"
        return f"<engine.Index {self._engine.root} ({state})>"

    def __len__(self) -> int:
        return self._live().image_count

    @property
    def root(self) -> Path:
        return self._engine.root

    @property
    def columns(self) -> tuple[str, ...]:
        """Catalog columns a ``where`` filter may name and ``search(columns=...)`` may return."""
        return tuple(self._live().store.catalog.filter_columns)

    @property
    def model(self):
        """The loaded PIR model (for inspection; encode through ``embed_text`` / ``embed_images``)."""
        return self._live().model

    def _live(self):
        if self._closed:
            raise EngineError(f"index {self._engine.root} is closed; open it again with engine.open(...)")
        return self._engine

    @contextmanager
    def _using(self):
        """The engine, counted as in use until the block ends (so ``close`` cannot pull it away mid-call)."""
        with self._state:
            engine = self._live()
            self._active += 1
        try:
            yield engine
        finally:
            with self._state:
                self._active -= 1
                self._state.notify_all()

    # ---- search --------------------------------------------------------------------------------------------
    def search(self, text: str | None = None, *, image: Any = None, k: int = DEFAULT_K, where: str | None = None,
               rerank: str = "none", target: str = "images", rerank_depth: int = DEFAULT_RERANK_DEPTH,
               columns: Sequence[str] = (), options: RerankOptions | None = None, bbox: Any = None,
               near: Any = None, radius_km: float | None = None):
        """The k best images (or captions, ``target="captions"``) for ``text`` or ``image`` as a pyarrow Table:
        id, score, path, class, captions (+ caption_id, caption for captions), then the ``columns`` asked for.

        ``image``: a file path, a PIL image or a numpy array (H×W, H×W×3 or H×W×4; uint8, or floats in 0..1).
        ``where``: an SQL condition on the catalog (``ix.columns``), applied before the k-NN search.
        ``bbox`` (W, S, E, N) / ``near`` (LON, LAT) with ``radius_km``: chips of GeoTIFF scenes by place (WGS84
        degrees; a sequence of numbers or "W,S,E,N" text), combined with ``where`` by AND (docs/geo.md).
        The engine's notes (a clamped k, a truncated query) are in ``table.schema.metadata[b"notes"]``."""
        with self._using() as engine:
            extra = _extra_columns(columns, engine.store.catalog.filter_columns)
            request = _request(text, image, k, where, rerank, target, rerank_depth, options,
                               _place(bbox, near, radius_km))
            return result_table(engine, engine.search(request), extra)

    def query(self, request: QueryRequest) -> QueryResult:
        """One QueryRequest answered as a QueryResult (what ``engine query`` prints)."""
        if not isinstance(request, QueryRequest):
            raise ConfigError(f"query() takes a QueryRequest, got {type(request).__name__}")
        with self._using() as engine:
            return engine.search(request)

    # ---- embeddings ----------------------------------------------------------------------------------------
    def embed_text(self, texts: Iterable[str]) -> np.ndarray:
        """(n, D) float32 L2-normalised text embeddings, as stored for the index's captions."""
        with self._using() as engine:
            if isinstance(texts, str):
                raise ConfigError("embed_text takes a list of strings; wrap one text as [text]")
            texts = list(texts) if texts is not None else None
            if texts is None or not all(isinstance(text, str) for text in texts):
                raise ConfigError("embed_text takes a list of strings")
            if not texts:
                return np.zeros((0, engine.model.config.head.embed_dim), np.float32)

            def encode(chunk: list[str]) -> np.ndarray:
                return engine.model.encode_text(chunk).float().cpu().numpy()

            return np.concatenate([engine.run_model(encode, texts[start:start + EMBED_BATCH])
                                   for start in range(0, len(texts), EMBED_BATCH)])

    def embed_images(self, images: Iterable[Any]) -> np.ndarray:
        """(n, D) float32 embeddings of images (paths, PIL images or arrays), encoded as the index's images."""
        with self._using() as engine:
            if images is None or isinstance(images, (str, Path, np.ndarray)) or _is_pil(images):
                raise ConfigError("embed_images takes a list of images (paths, PIL images or arrays); "
                                  "wrap one as [image]")
            pictures = [as_pil(item, f"images[{position}]") for position, item in enumerate(images)]
            if not pictures:
                return np.zeros((0, engine.model.config.head.embed_dim), np.float32)

            def encode(chunk: list) -> np.ndarray:
                import torch

                pixels = torch.stack([engine.transform(picture) for picture in chunk]).to(engine.device)
                return engine.model.encode_image(pixels).float().cpu().numpy()

            return np.concatenate([engine.run_model(encode, pictures[start:start + EMBED_BATCH])
                                   for start in range(0, len(pictures), EMBED_BATCH)])


def _place(bbox: Any, near: Any, radius_km: Any):
    """The place filter of ``search(bbox=..., near=..., radius_km=...)`` (None when none is given), with the
    API's argument names in the messages."""
    from engine.query.geo_filter import parse_geo_filter

    texts = []
    for name, value in (("bbox", bbox), ("near", near)):
        if value is not None and not isinstance(value, str):
            try:
                value = ",".join(repr(float(number)) for number in value)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a sequence of numbers or a comma-separated string, "
                                  f"got {value!r}") from None
        texts.append(value)
    if radius_km is not None and (isinstance(radius_km, bool) or not isinstance(radius_km, (int, float, np.number))):
        raise ConfigError(f"radius_km must be a number of kilometres, got {radius_km!r}")
    try:
        return parse_geo_filter(texts[0], texts[1], radius_km)
    except EngineError as error:
        message = str(error).replace("--radius-km", "radius_km").replace("--bbox", "bbox").replace("--near", "near")
        raise ConfigError(message) from None


def _request(text, image, k, where, rerank, target, rerank_depth, options, place=None) -> QueryRequest:
    """A checked QueryRequest from keyword arguments (the API's names in the messages)."""
    from engine.query.request import validate_request

    if (text is None) == (image is None):
        raise ConfigError("give either a text query or image=..., not " + ("both" if text is not None else "neither"))
    if text is not None and not isinstance(text, str):
        raise ConfigError(f"text must be a string, got {type(text).__name__}")
    for name, value in (("k", k), ("rerank_depth", rerank_depth)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    for name, value in (("where", where), ("rerank", rerank), ("target", target)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {type(value).__name__}")
    if options is not None and not isinstance(options, RerankOptions):
        raise ConfigError(f"options must be an engine.query.request.RerankOptions, got {type(options).__name__}")
    fields: dict[str, Any] = {"text": text}
    if image is not None:
        if isinstance(image, (str, Path)):
            from engine import preflight

            preflight.check_image_file(Path(image), "image")
            fields = {"image_path": str(image)}
        else:
            fields = {"image": as_pil(image, "image")}
    request = QueryRequest(**fields, k=int(k), where=where, rerank=rerank or "none", target=target or "images",
                           rerank_depth=int(rerank_depth), options=options or RerankOptions(), place=place)
    validate_request(request)
    return request


def _is_pil(value: Any) -> bool:
    from PIL import Image

    return isinstance(value, Image.Image)


def as_pil(value: Any, name: str):
    """An RGB PIL image from a path, a PIL image or an array; DataError/ConfigError naming ``name`` otherwise.

    All three pass ``engine.data.image_guard``'s limits (``--max-image-pixels``): a file before it is decoded,
    an image in memory before the model's resize (an extreme aspect ratio would resize to gigabytes)."""
    from PIL import Image

    from engine.data.image_guard import check_size
    from engine.data.images import load_rgb, to_rgb

    if isinstance(value, (str, Path)):
        return load_rgb(value)
    if isinstance(value, Image.Image):
        check_size(name, value.width, value.height)
        return to_rgb(value)
    if isinstance(value, np.ndarray):
        return _array_image(value, name)
    raise ConfigError(f"{name} must be a file path, a PIL image or a numpy array, got {type(value).__name__}")


def _array_image(array: np.ndarray, name: str):
    from PIL import Image

    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)) or min(array.shape[:2]) < 1:
        raise DataError(f"{name}: an image array must be H×W, H×W×3 or H×W×4, got shape {array.shape}")
    from engine.data.image_guard import check_size

    check_size(name, array.shape[1], array.shape[0])
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError(f"{name}: a float image array must hold values within 0..1")
        pixels = np.round(array * 255).astype(np.uint8)
    else:
        raise DataError(f"{name}: an image array must be uint8 (0..255) or float (0..1), got {array.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    from engine.data.images import to_rgb

    return to_rgb(picture)


def _extra_columns(columns: Sequence[str], known: Sequence[str]) -> list[str]:
    if isinstance(columns, str):
        raise ConfigError("columns takes a list of column names, e.g. columns=['split']")
    columns = list(columns or ())
    unknown = [name for name in columns if not isinstance(name, str) or name not in known]
    if unknown:
        raise ConfigError(f"columns: unknown {', '.join(map(repr, unknown))}; this index has {', '.join(known)}")
    return [name for name in dict.fromkeys(columns) if name not in RESULT_COLUMNS and name != "image_id"]


def result_table(engine, result: QueryResult, extra: list[str]):
    """A QueryResult as a pyarrow Table (columns: RESULT_COLUMNS [+ CAPTION_COLUMNS] + ``extra``)."""
    import json

    import pyarrow as pa

    hits = result.hits
    data: dict[str, pa.Array] = {
        "id": pa.array([hit.image_id for hit in hits], pa.int64()),
        "score": pa.array([hit.score for hit in hits], pa.float64()),
        "path": pa.array([hit.path for hit in hits], pa.string()),
        "class": pa.array([hit.label for hit in hits], pa.string()),
        "captions": pa.array([hit.captions for hit in hits], pa.list_(pa.string())),
    }
    if result.target == "captions":
        data["caption_id"] = pa.array([hit.caption_id for hit in hits], pa.int64())
        data["caption"] = pa.array([hit.text for hit in hits], pa.string())
    if extra:
        values = _catalog_values(engine, [hit.image_id for hit in hits], extra)
        for name in extra:
            data[name] = values.column(name)
    metadata = {"query": result.query, "notes": json.dumps(result.notes),
                "timings_ms": json.dumps({key: round(value, 3) for key, value in result.timings_ms.items()})}
    return pa.table(data).replace_schema_metadata(metadata)


def _catalog_values(engine, ids: list[int], columns: list[str]):
    """``columns`` of the catalog for ``ids``, in that order (one read through this thread's cursor)."""
    import pyarrow as pa

    from indexing.sql_filter import FILTER_VIEW

    quoted = ", ".join('"' + name.replace('"', '""') + '"' for name in columns)
    table = engine.store.cursor().sql(
        f"SELECT image_id, {quoted} FROM {FILTER_VIEW} WHERE image_id IN (SELECT unnest($ids))",
        params={"ids": [int(value) for value in ids]}).to_arrow_table()
    position = {int(value): row for row, value in enumerate(table.column("image_id").to_pylist())}
    order = pa.array([position[value] for value in ids], pa.int64())
    return table.take(order)
