"""Render the ``ann`` block of docs/benchmarks.md from docs/bench/ann_*.json (written by bench.ann_bench).

    python -m bench.report_ann [--input docs/bench] [--page docs/benchmarks.md] [--target 0.95]

"Cheapest setting" of an index type = the sweep point with the lowest single-query p50 (1 thread, the way a
2-core server answers concurrent requests) among those reaching recall@k >= target. The crossover is the
smallest measured size at which that setting answers faster than faiss Flat at the same size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.ann_bench import size_label
from release.docs_blocks import markdown_table, update_page
from engine.errors import DataError, EngineError

BLOCK = "ann"
DEFAULT_TARGET = 0.95
MIB = 1024 * 1024
ANN_METHODS = {"ivf_flat": "IVF-Flat", "hnsw": "HNSW", "ivf_pq": "IVF-PQ", "ivf_pq_refine": "IVF-PQ + refine"}
EXACT_METHODS = {"numpy": "numpy brute force", "duckdb": "DuckDB scan", "flat": "faiss Flat"}
SUMMARY_METHODS = {**EXACT_METHODS, **ANN_METHODS, "auto": "auto-chosen"}
REQUIRED_KEYS = ("size", "dim", "results", "machine", "versions", "command", "created", "config")


def load_runs(folder: Path) -> list[dict]:
    """Every ``ann_*.json`` in ``folder``, smallest size first; one-line DataError for a bad file."""
    runs = []
    for path in sorted(folder.glob("ann_*.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"{path}: not a readable JSON benchmark result ({error})") from None
        missing = [key for key in REQUIRED_KEYS if key not in run] if isinstance(run, dict) else ["all keys"]
        if missing or run.get("benchmark") != "ann":
            raise DataError(f"{path}: not an ann benchmark result (missing {', '.join(missing) or 'benchmark'})")
        runs.append(run)
    if not runs:
        raise DataError(f"{folder}: no ann_*.json results; run `python -m bench.ann_bench` first")
    return sorted(runs, key=lambda run: run["size"])


def latency(row: dict, threads: int) -> dict | None:
    return next((item for item in row["latency"] if item["threads"] == threads), None)


def p50(row: dict, threads: int = 1) -> float:
    item = latency(row, threads)
    return item["p50_ms"] if item else float("inf")


def cheapest(rows: list[dict], method: str, target: float) -> dict | None:
    """Lowest 1-thread p50 among ``method``'s rows reaching recall >= target (None if none does)."""
    passing = [row for row in rows if row["method"] == method and row["recall"] >= target]
    return min(passing, key=p50, default=None)


def _ms(value: float | None) -> str:
    if value is None or value == float("inf"):
        return "—"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _mib(count: int | None) -> str:
    return "—" if count is None else f"{count / MIB:.1f}"


def _memory(row: dict) -> int | None:
    """Serialized index size; for a DuckDB table (no index) the resident memory its load added."""
    return row["index_bytes"] or row["rss_delta_bytes"] or None


def _setting(row: dict) -> str:
    text = ", ".join(f"{name}={value}" for name, value in row["params"].items())
    if row["base_count"] and row.get("size") and row["base_count"] != row["size"]:
        text += f" (on {size_label(row['base_count'])} subset)"
    return text or "—"


def _run_header(run: dict) -> str:
    machine, config = run["machine"], run["config"]
    versions = ", ".join(f"{name} {version}" for name, version in run["versions"].items())
    ram = f"{machine['ram_bytes'] / 1024 ** 3:.0f} GiB RAM" if machine.get("ram_bytes") else "RAM unknown"
    lines = [f"- Run {run['created']} on {machine['nproc']} cores ({machine['cpu_model']}), {ram}; {versions}.",
             f"- Command: `{run['command']}`",
             f"- {config['queries']} queries, k={config['k']}; latency = one query per call, up to "
             f"{config['latency_queries']} queries or {config['latency_budget_s']:g} s per row and thread count; "
             f"load average {run['load_average_start']} at start, {run['load_average_end']} at end."]
    if run.get("note"):
        lines.append(f"- Note: {run['note']}")
    return "\n".join(lines)


def _size_table(run: dict) -> str:
    threads = sorted({item["threads"] for row in run["results"] for item in row["latency"]})
    headers = ["method", "index", "setting", "train s", "add s", "index MiB", "RSS Δ MiB"]
    headers += [f"p50/p95 ms ({t} thr)" for t in threads] + ["batch QPS", f"recall@{run['config']['k']}"]
    rows = []
    for row in run["results"]:
        row = {**row, "size": run["size"]}
        cells = [SUMMARY_METHODS.get(row["method"], row["method"]), f"`{row['label']}`", _setting(row),
                 f"{row['train_s']:.1f}", f"{row['add_s']:.1f}", _mib(row["index_bytes"] or None),
                 _mib(row["rss_delta_bytes"])]
        for count in threads:
            item = latency(row, count)
            cells.append(f"{_ms(item['p50_ms'])} / {_ms(item['p95_ms'])}" if item else "—")
        cells += [f"{row['batch_qps']:.0f}" if row["batch_qps"] else "—", f"{row['recall']:.4f}"]
        rows.append(cells)
    return markdown_table(headers, rows)


def _summary_table(runs: list[dict], target: float) -> str:
    headers = ["size", "method", "setting", "p50 ms (1 thr)", "p95 ms (1 thr)", "recall", "memory MiB",
               "build s", "× faster than Flat", "× faster than numpy", "× faster than DuckDB"]
    rows = []
    for run in runs:
        results = run["results"]
        references = {name: cheapest(results, name, 0.0) for name in ("flat", "numpy", "duckdb")}
        for method, name in SUMMARY_METHODS.items():
            row = cheapest(results, method, target)
            if row is None:
                if any(item["method"] == method for item in results):
                    rows.append([size_label(run["size"]), name, f"no setting reaches {target}"] + ["—"] * 8)
                continue
            ratios = [f"{p50(ref) / p50(row):.1f}" if ref else "—" for ref in references.values()]
            rows.append([size_label(run["size"]), name, _setting({**row, "size": run["size"]}), _ms(p50(row)),
                         _ms(latency(row, 1)["p95_ms"]) if latency(row, 1) else "—", f"{row['recall']:.4f}",
                         _mib(_memory(row)), f"{row['train_s'] + row['add_s']:.1f}", *ratios])
    return markdown_table(headers, rows)


def _scaling_table(runs: list[dict], target: float) -> str:
    headers = ["method (cheapest setting ≥ target)"] + [f"{size_label(run['size'])}: p50 ms / MiB" for run in runs]
    rows = []
    for method, name in SUMMARY_METHODS.items():
        cells = []
        for run in runs:
            row = cheapest(run["results"], method, target)
            cells.append(f"{_ms(p50(row))} / {_mib(_memory(row))}" if row else "—")
        rows.append([name] + cells)
    return markdown_table(headers, rows)


def crossover(runs: list[dict], method: str, target: float) -> str:
    """Where ``method`` (at its cheapest setting reaching ``target``) first answers faster than Flat."""
    previous = None
    for run in runs:
        row, flat = cheapest(run["results"], method, target), cheapest(run["results"], "flat", 0.0)
        if row and flat and p50(row) < p50(flat):
            where = f"between {size_label(previous)} and {size_label(run['size'])}" if previous else \
                f"at or below {size_label(run['size'])} (the smallest size measured)"
            return f"{ANN_METHODS[method]} beats Flat {where} vectors ({_ms(p50(row))} vs {_ms(p50(flat))} ms)."
        previous = run["size"]
    return f"{ANN_METHODS[method]} does not beat Flat at recall ≥ {target} up to {size_label(runs[-1]['size'])}."


def auto_versus_brute_force(run: dict, target: float) -> str:
    """One line for the automatically chosen index at this size: latency ratio to the exact scans, recall."""
    results = run["results"]
    auto = next((row for row in results if row["method"] == "auto"), None)
    if auto is None:
        return f"{size_label(run['size'])}: no automatically chosen index was measured."
    ratios = []
    for method in ("numpy", "duckdb"):
        reference = cheapest(results, method, 0.0)
        if reference:
            slower = p50(reference) / p50(auto)
            ratios.append(f"{EXACT_METHODS[method]} {_ms(p50(reference))} ms ({slower:.1f}× slower)")
    verdict = "meets" if auto["recall"] >= target else "misses"
    setting = _setting({**auto, "size": run["size"]})
    described = f"`{auto['label']}`" + (f" ({setting})" if setting != "—" else "")
    return (f"{size_label(run['size'])}: {described} answers in "
            f"{_ms(p50(auto))} ms p50 / {_ms(latency(auto, 1)['p95_ms'])} ms p95 (1 thread) at recall "
            f"{auto['recall']:.4f} ({verdict} ≥ {target}); " + ("; ".join(ratios) or "no exact scan measured") + ".")


def render(runs: list[dict], target: float = DEFAULT_TARGET) -> str:
    """The whole ``ann`` section as markdown."""
    first = runs[0]
    synthetic = first["config"]["synthetic"]
    parts = ["## Vector search: exact scans vs ANN indexes (`bench/ann_bench.py`)",
             f"Synthetic L2-normalised float32 vectors, dim {first['dim']}: a mixture of "
             f"{synthetic['n_clusters']} Gaussian clusters (Dirichlet weights, per-cluster spread "
             f"{synthetic['spread']}×U(0.5, 1.5), within-cluster variance decaying as "
             f"i^-{synthetic['spectrum_decay']} over a random basis, common direction weight "
             f"{synthetic['anisotropy']}; see bench/ann_data.py), seed {synthetic['seed']}; queries are fresh draws "
             "from the same mixture. Recall is against exact float64 search. Latency is one query per call (as a "
             "server answers); \"cheapest\" = lowest 1-thread p50 among an index type's settings reaching the "
             "recall target; \"× faster\" = the reference's 1-thread p50 divided by this row's. Regenerate this "
             "section with `python -m bench.report_ann`.",
             f"### Cheapest setting reaching recall ≥ {target}", _summary_table(runs, target),
             "### Scaling", _scaling_table(runs, target),
             "\n".join(f"- {crossover(runs, method, target)}" for method in ANN_METHODS),
             "### Automatically chosen index (`indexing.choose_index`) vs brute force",
             "\n".join(f"- {auto_versus_brute_force(run, target)}" for run in runs)]
    for run in runs:
        parts += [f"### {size_label(run['size'])} vectors: every setting", _run_header(run), _size_table(run)]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report_ann", description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("docs/bench"))
    parser.add_argument("--page", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        update_page(args.page, BLOCK, render(load_runs(args.input), args.target))
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{args.page}: ann section rendered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
