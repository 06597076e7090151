"""The index-choice decision table (pure) and factory validation (faiss)."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from indexing.choose import (FLAT_MAX_COUNT, HNSW_MAX_COUNT, choose_index, flat_bytes, hnsw_bytes, ivf_flat_bytes,
                             ivf_nlist, ivf_nprobe, parse_memory, validate_factory)

GB = 1024**3
DIM = 512


@pytest.mark.parametrize(
    ("count", "budget", "expected"),
    [
        (1, GB, "IDMap,Flat"),
        (2_100, GB, "IDMap,Flat"),
        (FLAT_MAX_COUNT, GB, "IDMap,Flat"),
        (FLAT_MAX_COUNT + 1, 16 * GB, "IDMap,HNSW32"),
        (HNSW_MAX_COUNT, 16 * GB, "IDMap,HNSW32"),
        (HNSW_MAX_COUNT + 1, 16 * GB, "IVF8192,Flat"),  # 4·√5M ≈ 8944 → 8192
        (100_000_000, 16 * GB, "IVF32768,PQ64np"),  # raw floats (~200 GB) do not fit: compress
        (100_000_000, 6 * GB, "IVF32768,PQ32np"),  # 48 does not divide 512
        (100_000_000, 3 * GB // 2, "IVF32768,PQ4np"),
        (100_000_000, 2 * GB, "IVF32768,PQ8np"),
    ],
)
def test_decision_table(count: int, budget: int, expected: str) -> None:
    spec = choose_index(count, DIM, budget)
    assert spec.factory == expected
    assert spec.estimated_bytes <= budget
    assert spec.metric == "inner_product"


def test_small_set_that_does_not_fit_flat_falls_to_compressed() -> None:
    budget = flat_bytes(1000, DIM) - 1
    spec = choose_index(1000, DIM, budget)
    assert "PQ" in spec.factory and spec.estimated_bytes <= budget


def test_hnsw_skipped_when_graph_does_not_fit_but_raw_vectors_do() -> None:
    count = 1_000_000
    nlist = ivf_nlist(count)
    budget = (hnsw_bytes(count, DIM) + ivf_flat_bytes(count, DIM, nlist)) // 2
    assert ivf_flat_bytes(count, DIM, nlist) <= budget < hnsw_bytes(count, DIM)
    spec = choose_index(count, DIM, budget)
    assert spec.factory == f"IVF{nlist},Flat"
    assert spec.params == {"nlist": nlist, "nprobe": ivf_nprobe(nlist)}


def test_pq_code_size_divides_dimension() -> None:
    spec = choose_index(100_000_000, 96, 4 * GB)
    assert spec.params["pq_m"] in (48, 32, 24, 16, 12, 8, 4) and 96 % spec.params["pq_m"] == 0


def test_nlist_rules() -> None:
    assert ivf_nlist(1_000_000) == 4096  # 4·√1e6 = 4000 → nearest power of two
    assert ivf_nlist(100_000_000) == 32768  # 4·√1e8 = 40000, log2 = 15.3 → 2^15
    assert ivf_nlist(1000) * 39 <= 1000  # every centroid keeps >= 39 training points
    assert ivf_nlist(1) == 1
    assert ivf_nprobe(4096) == 128  # 4096 / 16 = 256, capped
    assert ivf_nprobe(512) == 32
    assert ivf_nprobe(8) == 1


def test_too_small_budget_names_the_need() -> None:
    with pytest.raises(ConfigError, match="too small for 100000000 vectors.*needs about"):
        choose_index(100_000_000, DIM, 100 * 1024**2)


@pytest.mark.parametrize(("count", "dim", "budget"), [(0, DIM, GB), (10, 0, GB), (10, DIM, 0)])
def test_bad_arguments(count: int, dim: int, budget: int) -> None:
    with pytest.raises(ConfigError):
        choose_index(count, dim, budget)


def test_override_is_kept_with_search_params() -> None:
    spec = choose_index(10, DIM, GB, override="IVF256,PQ16")
    assert spec.factory == "IVF256,PQ16"
    assert spec.params["nlist"] == 256 and spec.params["nprobe"] == 16
    assert choose_index(10, DIM, GB, override="HNSW16").params["efSearch"] > 0


def test_parse_memory() -> None:
    assert parse_memory("512MB") == 512 * 1024**2
    assert parse_memory("1.5G") == int(1.5 * GB)
    assert parse_memory("2048") == 2048
    for bad in ("", "lots", "-1GB", "10XB", "0"):
        with pytest.raises(ConfigError, match="--memory-budget"):
            parse_memory(bad)


def test_validate_factory() -> None:
    pytest.importorskip("faiss")
    validate_factory("IVF16,PQ8", 64)
    validate_factory("HNSW32", 64)
    with pytest.raises(ConfigError, match=r"--index 'IVFx,Flat' is not a valid faiss factory.*could not parse"):
        validate_factory("IVFx,Flat", 64)
    with pytest.raises(ConfigError, match="--index 'PQ7'"):
        validate_factory("PQ7", 64)  # 64 is not divisible by 7


def test_an_absurd_number_of_ivf_lists_is_refused_before_faiss_allocates_them() -> None:
    import time

    from engine.errors import ConfigError
    from indexing.choose import MAX_IVF_LISTS, validate_factory

    began = time.perf_counter()
    with pytest.raises(ConfigError, match=f"at most {MAX_IVF_LISTS}"):
        validate_factory(f"IVF{MAX_IVF_LISTS * 16},Flat", 16)  # no vector count known (an --append, say)
    with pytest.raises(ConfigError, match="need at least as many vectors"):
        validate_factory("IVF2000000,Flat", 16, count=100)
    assert time.perf_counter() - began < 2
    validate_factory("IVF64,Flat", 16, count=10_000)  # an ordinary one still passes
