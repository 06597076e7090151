"""The ANN benchmark at toy scale: ground truth and recall against naive references, every method measured,
the auto-chosen index recorded, and the docs block rendered and replaced (not duplicated)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not an installed package

faiss = pytest.importorskip("faiss")

from bench import ann_data, report_ann  # noqa: E402
from release import docs_blocks  # noqa: E402
from bench.ann_bench import BenchConfig, main, run_size  # noqa: E402
from bench.ann_data import ClusterMixture, SyntheticConfig, exact_top_k, make_vectors, recall_at_k  # noqa: E402
from engine.errors import ConfigError, DataError  # noqa: E402

TINY = SyntheticConfig(dim=32, n_clusters=20, seed=3)


def naive_recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    per_query = []
    for row_found, row_truth in zip(found, truth):
        hits = [item for item in dict.fromkeys(row_found[:k].tolist()) if item in row_truth[:k].tolist()]
        per_query.append(len(hits) / k)
    return float(np.mean(per_query))


def test_recall_matches_naive_reference_with_missing_and_repeated_ids():
    rng = np.random.default_rng(0)
    truth = np.stack([rng.permutation(40)[:10] for _ in range(30)])
    found = truth.copy()
    found[:, 5:] = rng.integers(0, 40, size=(30, 5))
    found[::3, 9] = -1
    found[1, 0:2] = found[1, 2]  # a repeated id must count once
    assert recall_at_k(found, truth, 10) == pytest.approx(naive_recall(found, truth, 10))
    assert recall_at_k(truth, truth, 10) == 1.0
    assert recall_at_k(found, truth, 5) < 1.0 or np.array_equal(found[:, :5], truth[:, :5])


def test_exact_top_k_matches_full_sort_across_chunks(monkeypatch):
    monkeypatch.setattr(ann_data, "GROUND_TRUTH_CHUNK_ROWS", 97)
    base, queries = make_vectors(TINY, 1_000, 25)
    expected = np.argsort(-(queries.astype(np.float64) @ base.T.astype(np.float64)), axis=1)[:, :10]
    assert np.array_equal(exact_top_k(base, queries, 10), expected)


def test_generator_is_seeded_normalised_and_clustered():
    base, queries = make_vectors(TINY, 2_000, 100)
    again, _ = make_vectors(TINY, 2_000, 100)
    assert np.array_equal(base, again)
    assert np.allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    assert (queries @ base.T).max() < 0.9999  # held-out queries, not copies of base vectors
    centres = ClusterMixture(TINY).centres
    uniform = np.random.default_rng(1).standard_normal(base.shape).astype(np.float32)
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    assert (base @ centres.T).max(axis=1).mean() > (uniform @ centres.T).max(axis=1).mean() + 0.2


def test_noise_spectrum_decay_lowers_the_effective_dimension():
    def effective_dimension(decay: float) -> float:
        basis = ClusterMixture(replace(TINY, spectrum_decay=decay)).noise_basis.astype(np.float64)
        variances = np.linalg.eigvalsh(basis.T @ basis)
        return variances.sum() ** 2 / (variances ** 2).sum()  # participation ratio

    assert effective_dimension(0.0) == pytest.approx(TINY.dim, rel=1e-3)  # isotropic
    assert effective_dimension(1.0) < TINY.dim / 2


@pytest.fixture
def single_thread():
    """faiss and BLAS on one thread: two spinning OpenMP/BLAS threads on a busy 2-core CI box cost seconds."""
    from threadpoolctl import threadpool_limits

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        faiss.omp_set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_run() -> dict:
    config = BenchConfig(sizes=(2_000,), queries=60, threads=(1,), latency_queries=12, latency_budget_s=0.05,
                         hnsw_max_count=1_000, synthetic=TINY)
    from threadpoolctl import threadpool_limits

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # two spinning OpenMP/BLAS threads on a busy 2-core CI box cost seconds
    try:
        with threadpool_limits(limits=1):
            return run_size(config, 2_000, log=lambda _: None)
    finally:
        faiss.omp_set_num_threads(previous)


def test_every_method_is_measured_and_exact_ones_are_exact(tiny_run):
    rows = tiny_run["results"]
    methods = {row["method"] for row in rows}
    assert methods == {"numpy", "duckdb", "flat", "ivf_flat", "ivf_pq", "ivf_pq_refine", "hnsw", "auto"}
    by_method = {row["method"]: row for row in rows}
    for exact in ("numpy", "flat"):
        assert by_method[exact]["recall"] == 1.0 and by_method[exact]["recall_queries"] == 60
    assert by_method["duckdb"]["recall"] >= 0.99 and by_method["duckdb"]["recall_queries"] >= 10
    ivf = [row for row in rows if row["method"] == "ivf_flat"]
    recalls = [row["recall"] for row in sorted(ivf, key=lambda row: row["params"]["nprobe"])]
    assert recalls[0] < 1.0 and recalls[-1] == pytest.approx(1.0)  # probing every list is exhaustive
    assert all(later >= earlier - 0.02 for earlier, later in zip(recalls, recalls[1:]))
    assert all(row["base_count"] == 1_000 and "first 1000" in row["note"] for row in rows if row["method"] == "hnsw")
    assert tiny_run["auto_choice"]["factory"] == "IDMap,Flat" and by_method["auto"]["recall"] == 1.0
    assert all(row["latency"][0]["queries"] >= 10 and row["latency"][0]["p50_ms"] > 0 for row in rows)
    assert by_method["flat"]["index_bytes"] >= 2_000 * 32 * 4


def test_report_renders_and_replaces_only_its_block(tiny_run, tmp_path):
    (tmp_path / "ann_2k.json").write_text(json.dumps(tiny_run))
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    assert report_ann.main(["--input", str(tmp_path), "--page", str(page)]) == 0
    assert report_ann.main(["--input", str(tmp_path), "--page", str(page)]) == 0
    text = page.read_text()
    assert text.count("<!-- BEGIN ann -->") == 1 and "kept" in text
    assert "### 2k vectors: every setting" in text and tiny_run["command"] in text
    assert text.count("| IVF-Flat | `IVF32,Flat` |") == sum(row["method"] == "ivf_flat" for row in tiny_run["results"])
    assert "- 2k: `IDMap,Flat` answers in" in text and "DuckDB scan" in text and "× slower" in text
    for name in ("IVF-Flat", "HNSW", "IVF-PQ", "IVF-PQ + refine"):
        assert f"- {name} beats Flat" in text or f"- {name} does not beat Flat" in text


def test_cheapest_setting_and_crossover_follow_the_numbers(tiny_run):
    def row(method, recall, p50, **params):
        return {"method": method, "recall": recall, "params": params, "latency": [{"threads": 1, "p50_ms": p50}]}

    small = {**tiny_run, "size": 10_000, "results": [row("flat", 1.0, 1.0), row("hnsw", 0.99, 2.0, efSearch=64),
                                                        row("hnsw", 0.90, 0.5, efSearch=16)]}
    large = {**tiny_run, "size": 100_000, "results": [row("flat", 1.0, 9.0), row("hnsw", 0.97, 3.0, efSearch=64),
                                                         row("hnsw", 0.99, 4.0, efSearch=128)]}
    assert report_ann.cheapest(small["results"], "hnsw", 0.95)["params"] == {"efSearch": 64}
    assert report_ann.cheapest(large["results"], "hnsw", 0.98)["params"] == {"efSearch": 128}
    assert "between 10k and 100k" in report_ann.crossover([small, large], "hnsw", 0.95)
    assert "does not beat" in report_ann.crossover([small], "hnsw", 0.95)


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(DataError, match="no ann_"):
        report_ann.load_runs(tmp_path)
    (tmp_path / "ann_bad.json").write_text("{not json")
    with pytest.raises(DataError, match="ann_bad.json"):
        report_ann.load_runs(tmp_path)
    with pytest.raises(ConfigError, match="--pq-bytes"):
        BenchConfig(pq_bytes=7, synthetic=TINY)
    with pytest.raises(ConfigError, match="--sizes"):
        replace(BenchConfig(), sizes=(5,))
    assert main(["--sizes", "100", "--memory-budget", "lots"]) == 2
    assert capsys.readouterr().err.startswith("error: --memory-budget")
    with pytest.raises(DataError, match="BEGIN or END"):
        docs_blocks.replace_block("<!-- BEGIN ann -->\nno end", "ann", "x")


def test_million_scale_path_hnsw_subset_is_reused_for_the_auto_choice(monkeypatch, single_thread):
    """At 1 M vectors choose_index picks HNSW and HNSW is built on a subset; the auto row must be that index
    (same construction, its efSearch), marked as measured on the subset -- here at toy scale."""
    import bench.ann_bench as ann_bench
    from indexing.choose import IndexSpec

    spec = IndexSpec("IDMap,HNSW32", params={"efSearch": 48, "efConstruction": 80}, reason="graph index fits")
    monkeypatch.setattr(ann_bench, "choose_index", lambda *args: spec)
    config = BenchConfig(sizes=(1_500,), queries=30, threads=(1,), latency_queries=10, latency_budget_s=0.05,
                         hnsw_max_count=600, skip_duckdb=True, synthetic=TINY)
    result = run_size(config, 1_500, log=lambda _: None)
    auto = next(row for row in result["results"] if row["method"] == "auto")
    hnsw = [row for row in result["results"] if row["method"] == "hnsw"]
    assert 48 in [row["params"]["efSearch"] for row in hnsw]  # the auto setting joins the sweep
    assert auto["label"] == "IDMap,HNSW32" and auto["base_count"] == 600 and auto["params"]["efSearch"] == 48
    assert "same index and setting" in auto["note"]
    assert "duckdb" not in {row["method"] for row in result["results"]}
