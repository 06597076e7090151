"""Which FAISS index to build: a pure function of (vector count, dimension, memory budget, user override).

The rules (documented in docs/indexing.md, unit-tested in tests/test_indexing_choose.py):

1. ``count <= FLAT_MAX_COUNT`` and the raw vectors fit the budget → ``IDMap,Flat`` (exact inner product).
   The 50k bound keeps one exact query inside the query server's 15 ms p50 latency goal (measured Flat latencies:
   docs/benchmarks.md, ann block and "Measurements behind design choices").
2. ``count <= HNSW_MAX_COUNT`` and vectors + HNSW graph fit → ``IDMap,HNSW32`` (best recall/latency when the
   data fits in RAM; its build time grows super-linearly, hence the upper bound). efSearch 512 (why: the
   recall measured at 128 and 512 is in docs/benchmarks.md, "Measurements behind design choices"). These
   efSearch and nprobe values are starting points: :mod:`indexing.calibrate` tunes them on the built index.
3. raw vectors + inverted-list ids fit → ``IVF{nlist},Flat`` (exact distances inside probed lists).
4. otherwise → ``IVF{nlist},PQ{m}np`` with the largest ``m`` (bytes per code) dividing ``dim`` that fits
   (``np``: no polysemous training, a slow extra step a pure IVF-PQ search never uses). Its recall is limited
   (~0.7 at 100k for PQ64); it is the fallback when nothing uncompressed fits.
   Nothing fits → ``ConfigError`` naming the smallest budget that would.

``nlist`` ≈ 4·√n rounded to a power of two (the autofaiss heuristic), capped so that every centroid gets at
least ``MIN_POINTS_PER_CENTROID`` training points; ``nprobe`` = nlist / 16 clamped to [1, 128].
No faiss import here: the decision table is testable anywhere; :func:`validate_factory` needs faiss.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from engine.errors import ConfigError

METRIC = "inner_product"  # embeddings are L2-normalised, so inner product = cosine similarity
FLAT_MAX_COUNT = 50_000
HNSW_MAX_COUNT = 5_000_000
HNSW_M = 32
HNSW_EF_SEARCH = 512
HNSW_EF_CONSTRUCTION = 80
MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per k-means centroid
NLIST_PER_SQRT_N = 4
NPROBE_DIVISOR = 16
MAX_NPROBE = 128
MAX_IVF_LISTS = 1 << 22  # 4,194,304 lists; 4·sqrt(N) lists reach that only at 10^12 vectors
PQ_CODE_SIZES = (64, 48, 32, 24, 16, 12, 8, 4)  # bytes per vector, best recall first
FLOAT_BYTES = 4
ID_BYTES = 8
NEIGHBOUR_BYTES = 4
HNSW_UPPER_LEVEL_BYTES = 8
DEFAULT_MEMORY_BUDGET = "16GB"
_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3,
          "T": 1024**4, "TB": 1024**4}


@dataclass(frozen=True)
class IndexSpec:
    """The chosen index: faiss factory string, metric, search parameters and estimated resident memory."""

    factory: str
    metric: str = METRIC
    params: dict[str, int] = field(default_factory=dict)
    estimated_bytes: int = 0
    reason: str = ""

    @property
    def needs_training(self) -> bool:
        return "IVF" in self.factory or "PQ" in self.factory


def parse_memory(text: str) -> int:
    """'512MB', '4G', '1.5GB', '1000000' → bytes (binary units); one-line ConfigError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--memory-budget: expected a positive size such as 512MB or 16GB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def ivf_nlist(count: int) -> int:
    """Power of two near 4·√count, at most count / MIN_POINTS_PER_CENTROID (and at least 1)."""
    target = NLIST_PER_SQRT_N * math.sqrt(max(count, 1))
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and nlist * MIN_POINTS_PER_CENTROID > count:
        nlist //= 2
    return nlist


def ivf_nprobe(nlist: int) -> int:
    return max(1, min(MAX_NPROBE, nlist // NPROBE_DIVISOR))


def flat_bytes(count: int, dim: int) -> int:
    return count * (dim * FLOAT_BYTES + ID_BYTES)


def hnsw_bytes(count: int, dim: int, m: int = HNSW_M) -> int:
    # level 0 stores 2·M int32 neighbours; upper levels hold ~1/M of the nodes (≈ 2·4 bytes each on average)
    return count * (dim * FLOAT_BYTES + 2 * m * NEIGHBOUR_BYTES + HNSW_UPPER_LEVEL_BYTES + ID_BYTES)


def ivf_flat_bytes(count: int, dim: int, nlist: int) -> int:
    return count * (dim * FLOAT_BYTES + ID_BYTES) + nlist * dim * FLOAT_BYTES


def ivf_pq_bytes(count: int, dim: int, nlist: int, code_size: int) -> int:
    pq_codebooks = 256 * dim * FLOAT_BYTES
    return count * (code_size + ID_BYTES) + nlist * dim * FLOAT_BYTES + pq_codebooks


def choose_index(count: int, dim: int, memory_budget_bytes: int, override: str | None = None) -> IndexSpec:
    """Pick the index for ``count`` vectors of ``dim`` floats under ``memory_budget_bytes`` (see module doc)."""
    if count <= 0:
        raise ConfigError(f"index: nothing to index (vector count {count}); the shards hold no embeddings")
    if dim <= 0:
        raise ConfigError(f"index: embedding dimension must be positive, got {dim}")
    if memory_budget_bytes <= 0:
        raise ConfigError(f"--memory-budget must be positive, got {memory_budget_bytes} bytes")
    if override:
        return IndexSpec(factory=override.strip(), params=_params_for(override.strip(), count),
                         estimated_bytes=flat_bytes(count, dim), reason="--index override")
    flat = flat_bytes(count, dim)
    if count <= FLAT_MAX_COUNT and flat <= memory_budget_bytes:
        return IndexSpec("IDMap,Flat", estimated_bytes=flat, reason=f"{count} <= {FLAT_MAX_COUNT} vectors: exact")
    hnsw = hnsw_bytes(count, dim)
    if count <= HNSW_MAX_COUNT and hnsw <= memory_budget_bytes:
        return IndexSpec(f"IDMap,HNSW{HNSW_M}", params={"efSearch": HNSW_EF_SEARCH,
                         "efConstruction": HNSW_EF_CONSTRUCTION}, estimated_bytes=hnsw,
                         reason="graph index fits the memory budget")
    nlist = ivf_nlist(count)
    ivf = ivf_flat_bytes(count, dim, nlist)
    if ivf <= memory_budget_bytes:
        return IndexSpec(f"IVF{nlist},Flat", params={"nlist": nlist, "nprobe": ivf_nprobe(nlist)},
                         estimated_bytes=ivf, reason="raw vectors fit the memory budget")
    for code_size in PQ_CODE_SIZES:
        if dim % code_size:
            continue
        needed = ivf_pq_bytes(count, dim, nlist, code_size)
        if needed <= memory_budget_bytes:
            return IndexSpec(f"IVF{nlist},PQ{code_size}np", params={"nlist": nlist, "nprobe": ivf_nprobe(nlist),
                             "pq_m": code_size}, estimated_bytes=needed,
                             reason=f"compressed to {code_size} bytes/vector to fit the memory budget")
    smallest = min((c for c in PQ_CODE_SIZES if dim % c == 0), default=None)
    need = ivf_pq_bytes(count, dim, nlist, smallest) if smallest else ivf
    raise ConfigError(f"--memory-budget {memory_budget_bytes} bytes is too small for {count} vectors of dim {dim}; "
                      f"the most compact index needs about {need} bytes")


def _params_for(factory: str, count: int) -> dict[str, int]:
    """Search parameters for a user factory string: nprobe for IVF, efSearch for HNSW."""
    params: dict[str, int] = {}
    ivf = re.search(r"IVF(\d+)", factory)
    if ivf:
        params["nlist"] = int(ivf.group(1))
        params["nprobe"] = ivf_nprobe(int(ivf.group(1)))
    if "HNSW" in factory:
        params["efSearch"] = HNSW_EF_SEARCH
        params["efConstruction"] = HNSW_EF_CONSTRUCTION
    return params


def validate_factory(factory: str, dim: int, count: int | None = None) -> None:
    """Construct the factory string once so a typo fails before any encoding; one-line ConfigError.

    With ``count`` (the vectors a fresh build will train on) also refuse what would only fail after encoding:
    more IVF lists than vectors, or fewer vectors than a product quantizer's 2^nbits centroids."""
    import faiss

    # faiss allocates every inverted list when it builds the index: read their number from the string first, so
    # "IVF99999999" is refused at once instead of after seconds of allocation
    for lists in (int(match) for match in re.findall(r"IVF(\d+)", factory)):
        if lists > MAX_IVF_LISTS:
            raise ConfigError(f"--index {factory!r}: {lists} IVF lists is more than this engine builds "
                              f"(at most {MAX_IVF_LISTS})")
        if count is not None and lists > count:
            raise ConfigError(f"--index {factory!r}: {lists} IVF lists need at least as many vectors to train, "
                              f"and this build has {count}; use IVF{max(1, ivf_nlist(count))} or fewer lists")
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        lines = str(error).strip().splitlines() or ["unknown faiss error"]
        reason = lines[-1].rsplit(": ", 1)[-1]  # drop faiss's C++ source location prefix
        raise ConfigError(f"--index {factory!r} is not a valid faiss factory string for dim {dim}: "
                          f"{reason.strip()}") from None
    if count is None:
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.nlist > count:
        raise ConfigError(f"--index {factory!r}: {ivf.nlist} IVF lists need at least as many vectors to train, "
                          f"and this build has {count}; use IVF{max(1, ivf_nlist(count))} or fewer lists")
    quantizer = _product_quantizer(faiss, index)
    if quantizer is not None and quantizer.ksub > count:
        raise ConfigError(f"--index {factory!r}: its product quantizer trains {quantizer.ksub} centroids and this "
                          f"build has only {count} vectors")


def _product_quantizer(faiss, index):
    """The ``pq`` of an index or of the index it wraps (IDMap), if any."""
    for _ in range(3):
        index = faiss.downcast_index(index)
        if hasattr(index, "pq"):
            return index.pq
        inner = getattr(index, "index", None)
        if inner is None:
            return None
        index = inner
    return None
