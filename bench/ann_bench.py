"""ANN benchmark: exact scans vs faiss indexes on clustered synthetic embeddings, one JSON file per size.

    python -m bench.ann_bench --sizes 10000 100000 [--dim 512] [--note "..."]
    python -m bench.report_ann            # renders docs/benchmarks.md from docs/bench/ann_*.json

For each size, in one process and on the same vectors: numpy brute force, a DuckDB array_cosine_similarity
scan, faiss Flat, IVF-Flat (nprobe sweep), HNSW (efSearch sweep), IVF-PQ (nprobe sweep, with and without
exact re-ranking) and the index ``indexing.choose.choose_index`` picks for that size. HNSW above
``--hnsw-max-count`` vectors is built on the first ``--hnsw-max-count`` of them (its build time grows
super-linearly and takes tens of minutes at 1 M x 512 on two cores); those rows say so.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.ann_data import SyntheticConfig, exact_top_k, make_vectors
from bench.ann_faiss import Family, ivf_centroids, refine_sweep, sweep
from bench.ann_methods import MethodResult, Workload, duckdb_scan, numpy_brute_force
from bench.machine import library_versions, load_average, machine_info
from engine.atomic import write_json_atomic
from engine.errors import ConfigError, EngineError
from indexing.choose import DEFAULT_MEMORY_BUDGET, HNSW_EF_CONSTRUCTION, IndexSpec, choose_index, ivf_nlist, \
    parse_memory

NPROBE_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_SEARCH_SWEEP = (16, 32, 64, 128, 256, 512)
DEFAULT_OUTPUT = Path("docs/bench")


@dataclass(frozen=True)
class BenchConfig:
    """All knobs of one benchmark run (stored verbatim in every result file)."""

    sizes: tuple[int, ...] = (10_000, 100_000)
    queries: int = 1_000
    k: int = 10
    threads: tuple[int, ...] = (1, 2)
    latency_queries: int = 300
    latency_budget_s: float = 10.0
    hnsw_m: int = 32
    hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION
    hnsw_max_count: int = 200_000
    pq_bytes: int | None = None
    refine_k_factor: int = 16
    memory_budget: str = DEFAULT_MEMORY_BUDGET
    skip_duckdb: bool = False
    note: str = ""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        dim = self.synthetic.dim
        if not self.sizes or min(self.sizes) <= self.k:
            raise ConfigError(f"--sizes: every size must exceed k={self.k}, got {list(self.sizes)}")
        if self.k <= 0 or self.queries <= 0 or self.latency_queries <= 0 or self.latency_budget_s <= 0:
            raise ConfigError("--k, --queries, --latency-queries and --latency-budget-s must be positive")
        if not self.threads or min(self.threads) <= 0:
            raise ConfigError(f"--threads: expected positive thread counts, got {list(self.threads)}")
        if dim % self.pq_code_bytes:
            raise ConfigError(f"--pq-bytes {self.pq_code_bytes} must divide --dim {dim}")
        if self.hnsw_m <= 0 or self.hnsw_ef_construction <= 0 or self.hnsw_max_count <= self.k:
            raise ConfigError("--hnsw-m, --hnsw-ef-construction must be positive and --hnsw-max-count > k")
        parse_memory(self.memory_budget)

    @property
    def pq_code_bytes(self) -> int:
        """PQ code size: by default dim/8 bytes (8 dimensions per 8-bit sub-quantizer)."""
        return self.pq_bytes or max(1, self.synthetic.dim // 8)


def size_label(count: int) -> str:
    for divisor, suffix in ((1_000_000, "m"), (1_000, "k")):
        if count >= divisor and count % divisor == 0:
            return f"{count // divisor}{suffix}"
    return str(count)


def _core(factory: str) -> str:
    return factory.removeprefix("IDMap,").removeprefix("IDMap2,")


def _auto_family(spec: IndexSpec) -> Family:
    construction = tuple((name, value) for name, value in spec.params.items() if name == "efConstruction")
    search = tuple((name, value) for name, value in spec.params.items() if name in ("nprobe", "efSearch"))
    return Family(method="auto", factory=spec.factory, construction=construction, fixed_search=search,
                  note=f"chosen by indexing.choose_index: {spec.reason}")


def _reuse_for_auto(auto: Family, families: list[tuple[Family, list[MethodResult]]]) -> MethodResult | None:
    """The already-measured row that is exactly the automatically chosen index, if any."""
    search = dict(auto.fixed_search)
    for family, rows in families:
        if _core(family.factory) != _core(auto.factory) or dict(family.construction) != dict(auto.construction):
            continue
        for row in rows:
            if all(row.params.get(name) == value for name, value in search.items()):
                params = dict(row.params)
                return MethodResult(**{**vars(row), "method": "auto", "label": auto.factory, "params": params,
                                       "note": f"{auto.note}; same index and setting as the {row.label} row"})
    return None


def _sweep_values(base: tuple[int, ...], limit: int, extra: int | None) -> tuple[int, ...]:
    values = {value for value in base if value <= limit} | ({extra} if extra else set())
    return tuple(sorted(values))


def run_size(config: BenchConfig, count: int, log=print) -> dict:
    """Measure every method at one size; returns the JSON-ready result."""
    started, load_start = time.perf_counter(), load_average()
    dim = config.synthetic.dim
    base, queries = make_vectors(config.synthetic, count, config.queries)
    generated = time.perf_counter()
    truth = exact_top_k(base, queries, config.k)
    workload = Workload(base, queries, truth, config.k, config.threads, config.latency_queries,
                        config.latency_budget_s)
    phases = {"generate_s": generated - started, "ground_truth_s": time.perf_counter() - generated}
    spec = choose_index(count, dim, parse_memory(config.memory_budget))
    auto = _auto_family(spec)
    results = [numpy_brute_force(workload)]
    log(f"[{count}] numpy done")
    if not config.skip_duckdb:
        results.append(duckdb_scan(workload))
        log(f"[{count}] duckdb done")
    nlist = ivf_nlist(count)
    hnsw_count = min(count, config.hnsw_max_count)
    hnsw_note = "" if hnsw_count == count else f"built and measured on the first {hnsw_count} vectors only"
    ivf = Family("ivf_flat", f"IVF{nlist},Flat", "nprobe", _sweep_values(NPROBE_SWEEP, nlist,
                 spec.params.get("nprobe") if _core(spec.factory) == f"IVF{nlist},Flat" else None))
    pq = Family("ivf_pq", f"IVF{nlist},PQ{config.pq_code_bytes}np", "nprobe", ivf.sweep_values,
                note="no polysemous training (np: it costs minutes and only serves Hamming filtering); "
                     "coarse centroids reused from the IVF-Flat row (train_s = PQ training only)")
    hnsw = Family("hnsw", f"HNSW{config.hnsw_m}", "efSearch",
                  _sweep_values(EF_SEARCH_SWEEP, max(EF_SEARCH_SWEEP), spec.params.get("efSearch")),
                  construction=(("efConstruction", config.hnsw_ef_construction),), note=hnsw_note)
    measured: list[tuple[Family, list[MethodResult]]] = []
    flat_family = Family("flat", "IDMap,Flat")
    index, rows = sweep(flat_family, workload)
    measured.append((flat_family, rows))
    del index
    index, rows = sweep(ivf, workload)
    measured.append((ivf, rows))
    centroids = ivf_centroids(index)
    coarse_s = rows[0].train_s
    del index
    log(f"[{count}] flat, ivf done")
    index, rows = sweep(pq, workload, centroids, extra_note=f"IVF-Flat k-means took {coarse_s:.1f} s")
    measured.append((pq, rows))
    refine_rows = refine_sweep(index, rows[0], workload, config.refine_k_factor, ivf.sweep_values)
    del index
    log(f"[{count}] ivf-pq done")
    hnsw_workload = workload if hnsw_count == count else workload.subset(hnsw_count)
    index, rows = sweep(hnsw, hnsw_workload)
    measured.append((hnsw, rows))
    del index
    log(f"[{count}] hnsw done")
    auto_row = _reuse_for_auto(auto, measured)
    if auto_row is None:
        auto_workload = hnsw_workload if "HNSW" in spec.factory else workload
        _, auto_rows = sweep(auto, auto_workload)
        auto_row = auto_rows[0]
    for _, rows in measured:
        results.extend(rows)
    results.extend(refine_rows)
    results.append(auto_row)
    phases["total_s"] = time.perf_counter() - started
    return {"benchmark": "ann", "schema": 1, "size": count, "dim": dim,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "bench.ann_bench", *sys.argv[1:]]),
            "machine": machine_info(), "versions": library_versions(), "load_average_start": load_start,
            "load_average_end": load_average(), "note": config.note, "phases": phases,
            "config": {**asdict(config), "sizes": list(config.sizes)},
            "auto_choice": {"factory": spec.factory, "params": spec.params, "reason": spec.reason},
            "results": [row.to_json() for row in results]}


def parse_args(argv: list[str]) -> tuple[BenchConfig, Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.ann_bench", description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    parser.add_argument("--sizes", type=int, nargs="+", default=list(defaults.sizes))
    parser.add_argument("--dim", type=int, default=defaults.synthetic.dim)
    parser.add_argument("--clusters", type=int, default=defaults.synthetic.n_clusters)
    parser.add_argument("--seed", type=int, default=defaults.synthetic.seed)
    parser.add_argument("--queries", type=int, default=defaults.queries)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--threads", type=int, nargs="+", default=list(defaults.threads))
    parser.add_argument("--latency-queries", type=int, default=defaults.latency_queries)
    parser.add_argument("--latency-budget-s", type=float, default=defaults.latency_budget_s)
    parser.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m)
    parser.add_argument("--hnsw-ef-construction", type=int, default=defaults.hnsw_ef_construction)
    parser.add_argument("--hnsw-max-count", type=int, default=defaults.hnsw_max_count)
    parser.add_argument("--pq-bytes", type=int, default=None, help="PQ code bytes per vector (default dim/8)")
    parser.add_argument("--refine-k-factor", type=int, default=defaults.refine_k_factor)
    parser.add_argument("--memory-budget", default=defaults.memory_budget, help="passed to choose_index")
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder for ann_<size>.json")
    args = parser.parse_args(argv)
    synthetic = SyntheticConfig(dim=args.dim, n_clusters=args.clusters, seed=args.seed)
    config = BenchConfig(sizes=tuple(args.sizes), queries=args.queries, k=args.k, threads=tuple(args.threads),
                         latency_queries=args.latency_queries, latency_budget_s=args.latency_budget_s,
                         hnsw_m=args.hnsw_m, hnsw_ef_construction=args.hnsw_ef_construction,
                         hnsw_max_count=args.hnsw_max_count, pq_bytes=args.pq_bytes,
                         refine_k_factor=args.refine_k_factor, memory_budget=args.memory_budget,
                         skip_duckdb=args.skip_duckdb, note=args.note, synthetic=synthetic)
    return config, args.output


def main(argv: list[str] | None = None) -> int:
    try:
        config, output = parse_args(sys.argv[1:] if argv is None else argv)
        for count in config.sizes:
            result = run_size(config, count, log=lambda text: print(text, file=sys.stderr, flush=True))
            path = output / f"ann_{size_label(count)}.json"
            write_json_atomic(path, result, indent=1)
            print(f"{path}: {len(result['results'])} rows in {result['phases']['total_s']:.0f} s")
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
