"""Typed requests, options and results of the query engine (plain dataclasses, no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import ConfigError

TARGETS = ("images", "captions")
RERANKERS = ("none", "aas", "par-bonus")
# the test-time PAR score bonus was called "par" before training-time PAR (`engine train --par`) existed
RENAMED_RERANKERS = {"par": "par-bonus"}
DEFAULT_K = 10
DEFAULT_RERANK_DEPTH = 50
MAX_RERANK_DEPTH = 1000
MAX_QUERY_CHARS = 2000  # longer text is cut here before tokenizing (the tokenizer keeps far fewer words anyway)


@dataclass(frozen=True)
class RerankOptions:
    """Reranker settings; the formulas they enter are documented in docs/query.md.

    ``layer``: vision self-attention layer for AAS (negative counts from the end; deep = semantic, shallow = style).
    ``prf_references``: text queries rerank against the first-stage top-m images (pseudo-relevance feedback).
    ``aas_text_weight``: text queries score ``(1 - w) * first_stage + w * AAS``; image queries use pure AAS.
    ``par_ccs`` / ``par_ascs``: par-bonus gates (class-token and attention-map cosine must both exceed them).
    ``par_top_fraction``: share of token positions that count as a map's top-attended positions (TOAI).
    ``par_beta``: score added for a full top-position overlap of a gated pair.
    """

    layer: int = -1
    prf_references: int = 3
    aas_text_weight: float = 0.5
    par_ccs: float = 0.7
    par_ascs: float = 0.7
    par_top_fraction: float = 0.2
    par_beta: float = 0.1

    def validate(self) -> "RerankOptions":
        if self.prf_references < 1:
            raise ConfigError(f"--prf-references must be at least 1, got {self.prf_references}")
        if not 0.0 <= self.aas_text_weight <= 1.0:
            raise ConfigError(f"--aas-weight must be within [0, 1], got {self.aas_text_weight}")
        if not 0.0 < self.par_top_fraction <= 1.0:
            raise ConfigError(f"--par-top must be within (0, 1], got {self.par_top_fraction}")
        for name, value in (("--par-ccs", self.par_ccs), ("--par-ascs", self.par_ascs)):
            if not -1.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a cosine threshold within [-1, 1], got {value}")
        if self.par_beta < 0:
            raise ConfigError(f"--par-beta must be 0 or more, got {self.par_beta}")
        return self


@dataclass(frozen=True)
class QueryRequest:
    """One search: text or an image (a path, the raw bytes of an upload or an RGB PIL image), never both."""

    text: str | None = None
    image_path: str | None = None
    image_bytes: bytes | None = None
    image: object | None = None  # an in-memory RGB PIL image (the Python API)
    k: int = DEFAULT_K
    target: str = "images"
    where: str | None = None
    rerank: str = "none"
    rerank_depth: int = DEFAULT_RERANK_DEPTH
    options: RerankOptions = field(default_factory=RerankOptions)
    place: object | None = None  # engine.query.geo_filter.GeoFilter: --bbox / --near over GeoTIFF chips

    @property
    def is_image(self) -> bool:
        return self.image_path is not None or self.image_bytes is not None or self.image is not None

    def describe(self) -> str:
        if self.text is not None:
            return self.text
        if self.image is not None:
            return "in-memory image"
        return f"image {self.image_path}" if self.image_path else "uploaded image"


@dataclass(frozen=True)
class Hit:
    """One result row; ``caption_id``/``text`` are set when the target is captions."""

    rank: int
    score: float
    first_stage_score: float
    image_id: int
    path: str
    split: str | None
    label: str | None
    captions: list[str]
    caption_id: int | None = None
    text: str | None = None
    geo: dict | None = None  # map columns of a chip of a GeoTIFF scene (engine.query.geo_filter.geo_rows)

    def to_json(self) -> dict:
        row = {"rank": self.rank, "score": round(self.score, 6), "first_stage_score": round(self.first_stage_score, 6),
               "image_id": self.image_id, "path": self.path, "split": self.split, "label": self.label,
               "captions": self.captions}
        if self.caption_id is not None:
            row.update(caption_id=self.caption_id, text=self.text)
        if self.geo is not None:
            from engine.query.geo_json import hit_location

            row["location"] = hit_location(self.geo)
        return row


@dataclass
class QueryResult:
    """Hits best first, plus the notes a user should see (clamped k, truncated query, empty filter...)."""

    query: str
    target: str
    k: int
    where: str | None
    rerank: str
    hits: list[Hit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    query_image_jpeg: bytes | None = None  # small thumbnail of an image query, for the gallery
    encode_batch: int | None = None  # queries encoded in this one's encoder call (batched serving only)
    place: str | None = None  # the --bbox / --near filter, described

    def to_json(self) -> dict:
        return {"query": self.query, "target": self.target, "k": self.k, "where": self.where,
                **({"place": self.place} if self.place else {}),
                "rerank": self.rerank, "notes": self.notes,
                "timings_ms": {name: round(value, 3) for name, value in self.timings_ms.items()},
                **({"encode_batch": self.encode_batch} if self.encode_batch is not None else {}),
                "results": [hit.to_json() for hit in self.hits]}


def validate_request(request: QueryRequest) -> None:
    """Reject contradictory or out-of-range requests with one line naming the flag."""
    for name, value in (("the query", request.text), ("--where", request.where)):
        if value is not None and has_lone_surrogates(value):
            raise ConfigError(f"{name} is not valid UTF-8 text (an undecodable byte at character "
                              f"{_first_surrogate(value)}); pass it as UTF-8")
    if request.target not in TARGETS:
        raise ConfigError(f"--target: expected one of {', '.join(TARGETS)}, got {request.target!r}")
    if request.rerank in RENAMED_RERANKERS:
        raise ConfigError(f"--rerank {request.rerank} is now --rerank {RENAMED_RERANKERS[request.rerank]} (a score "
                          "bonus at query time; PAR's attention reinforcement is training: engine train --par)")
    if request.rerank not in RERANKERS:
        raise ConfigError(f"--rerank: expected one of {', '.join(RERANKERS)}, got {request.rerank!r}")
    if request.k <= 0:
        raise ConfigError(f"-k must be a positive number of results, got {request.k}")
    if not 1 <= request.rerank_depth <= MAX_RERANK_DEPTH:
        raise ConfigError(f"--rerank-depth must be within 1..{MAX_RERANK_DEPTH}, got {request.rerank_depth}")
    if request.is_image and request.text is not None:
        raise ConfigError("give either a text query or --image, not both")
    if not request.is_image and (request.text is None or not request.text.strip()):
        raise ConfigError("the query is empty: give some words to search for, or --image PATH")
    if request.target == "captions" and request.rerank != "none":
        raise ConfigError("--rerank works on images; use --target images or --rerank none")
    if request.where is not None and not request.where.strip():
        raise ConfigError("--where is empty: give an SQL condition such as \"split = 'test'\"")
    request.options.validate()


def has_lone_surrogates(text: str) -> bool:
    """True for text UTF-8 cannot encode: undecodable bytes of a command line (``r\xffiver``) or a JSON
    ``\ud800`` escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_surrogate(text: str) -> int:
    return next((position for position, character in enumerate(text) if "\ud800" <= character <= "\udfff"), 0)
