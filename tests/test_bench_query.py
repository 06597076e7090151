"""bench/query_bench.py at toy scale: every row is measured, the eager-encoder row sits beside the traced one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a script folder, not an installed package
sys.path.insert(0, str(Path(__file__).parent))
pytest.importorskip("faiss")

from bench import query_bench
from query_fixtures import build_query_index


def test_query_bench_measures_every_row_and_states_the_goal(tmp_path_factory: pytest.TempPathFactory) -> None:
    index_dir, _, _ = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    report = query_bench.measure(index_dir, count=6, depth=4, rerank_count=2)
    assert report["traced_text_encoder"] is True
    assert list(report["results"]) == [*query_bench.RERANKERS, query_bench.EAGER_ROW]
    plain = report["results"]["none"]
    assert plain["queries"] == 6 and len(plain["raw_ms"]) == 6 and plain["p50_ms"] > 0
    assert "encode" in plain["stages"] and "rerank" in report["results"]["aas"]["stages"]
    assert report["results"]["par-bonus"]["queries"] == 2
    assert report["peers"]["faiss"]["recall"] == pytest.approx(1.0)  # a Flat index at this size: exact
    text = query_bench.markdown(report)
    assert "the 15 ms goal" in text and query_bench.EAGER_ROW in text and "× faiss p50" in text
