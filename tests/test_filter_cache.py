"""The warm server's ``--where`` result cache: bounded LRU, read-only results, errors never kept, answers equal."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine.errors import EngineError
from engine.query.filter_cache import FilterCache


def test_least_recently_used_condition_goes_first() -> None:
    cache = FilterCache(max_entries=2, max_ids=100)
    cache.put("a", np.arange(3))
    cache.put("b", np.arange(4))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", np.arange(5))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2 and cache.hits == 3 and cache.misses == 1


def test_total_ids_are_bounded_and_a_broad_result_is_not_kept() -> None:
    cache = FilterCache(max_entries=10, max_ids=40)
    kept = cache.put("broad", np.arange(11))  # over a quarter of max_ids
    assert cache.get("broad") is None and list(kept) == list(range(11))
    for name in "abcd":
        cache.put(name, np.arange(10))
    cache.put("e", np.arange(10))  # 50 ids > 40: the oldest go
    assert cache.get("a") is None and cache.get("e") is not None and cache._ids <= 40


def test_kept_results_are_read_only() -> None:
    ids = FilterCache().put("x", np.arange(5))
    with pytest.raises(ValueError):
        ids[0] = 7


# ---- the real engine ---------------------------------------------------------------------------------------
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    from query_fixtures import build_query_index

    from engine.query.engine import QueryEngine

    index_dir, _, _ = build_query_index(tmp_path_factory.getbasetemp() / "query-index")
    engine = QueryEngine(index_dir, device="cpu")
    yield engine
    engine.close()


def test_a_repeated_condition_is_answered_from_the_cache(engine, monkeypatch) -> None:
    import indexing.sql_filter
    from engine.query.request import QueryRequest

    request = QueryRequest(text="river", k=3, where="split = 'train'")
    cold = engine.search(request)
    calls = []
    original = indexing.sql_filter.run_filter
    monkeypatch.setattr(indexing.sql_filter, "run_filter", lambda *args: calls.append(args) or original(*args))
    warm = engine.search(request)
    assert calls == []  # not run again
    assert [hit.image_id for hit in warm.hits] == [hit.image_id for hit in cold.hits]
    other = engine.search(QueryRequest(text="river", k=3, where="split = 'test'"))
    assert len(calls) == 1 and {hit.split for hit in other.hits} == {"test"}


def test_a_failing_condition_is_never_kept(engine) -> None:
    from engine.query.request import QueryRequest

    before = len(engine.store.filter_cache)
    for _ in range(2):  # refused both times: the error was not cached as an answer
        with pytest.raises(EngineError, match="no_such_column"):
            engine.search(QueryRequest(text="river", k=3, where="no_such_column = 1"))
    assert len(engine.store.filter_cache) == before
