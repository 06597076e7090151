"""Timing and memory primitives shared by every method of the ANN benchmark.

Single-query latency is measured the way a server sees it: one query per call, after a short warm-up, with
the library restricted to a given number of threads. Each (method, threads) loop stops after
``max_queries`` queries or ``budget_s`` seconds (but never before ``MIN_LATENCY_QUERIES``), so slow scans at
1 M vectors stay bounded; the number of queries actually timed is recorded.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np

WARMUP_QUERIES = 3
MIN_LATENCY_QUERIES = 10
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
KIB = 1024


@dataclass(frozen=True)
class Latency:
    """Single-query latency percentiles (milliseconds) over ``queries`` timed calls."""

    threads: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    queries: int

    def to_json(self) -> dict:
        return asdict(self)


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux ``clear_refs`` value 5); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KIB
    return rss_bytes()


@dataclass
class MemoryDelta:
    """RSS growth across a block (what stays allocated) and peak RSS growth during it (None if unknown)."""

    rss_delta_bytes: int = 0
    peak_delta_bytes: int | None = None


@contextmanager
def memory_delta() -> Iterator[MemoryDelta]:
    """Measure how much resident memory a block keeps and how high it peaks above the starting point."""
    gc.collect()
    result = MemoryDelta()
    before = rss_bytes()
    peak_known = _reset_peak_rss()
    yield result
    gc.collect()
    result.rss_delta_bytes = rss_bytes() - before
    result.peak_delta_bytes = _peak_rss_bytes() - before if peak_known else None


@contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """Limit faiss (OpenMP) and numpy (BLAS) to ``threads`` threads inside the block."""
    import faiss
    from threadpoolctl import threadpool_limits

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        faiss.omp_set_num_threads(previous)


def single_query_latency(search_one: Callable[[np.ndarray], object], queries: np.ndarray, threads: int,
                         max_queries: int, budget_s: float, collect: list | None = None) -> Latency:
    """Time ``search_one(query_row)`` one query at a time (rows of shape (1, dim)); with ``collect`` the
    results of the timed queries are appended to it (in query order, starting at row 0)."""
    with thread_limit(threads):
        for row in range(min(WARMUP_QUERIES, len(queries))):
            search_one(queries[row:row + 1])
        timings: list[float] = []
        started = time.perf_counter()
        for row in range(min(max_queries, len(queries))):
            tick = time.perf_counter()
            result = search_one(queries[row:row + 1])
            timings.append(time.perf_counter() - tick)
            if collect is not None:
                collect.append(result)
            if len(timings) >= MIN_LATENCY_QUERIES and time.perf_counter() - started > budget_s:
                break
    millis = np.asarray(timings) * 1000.0
    return Latency(threads=threads, p50_ms=float(np.percentile(millis, 50)),
                   p95_ms=float(np.percentile(millis, 95)), mean_ms=float(millis.mean()), queries=len(millis))


def timed(function: Callable[[], object]) -> tuple[object, float]:
    """(result, seconds) of one call."""
    tick = time.perf_counter()
    result = function()
    return result, time.perf_counter() - tick
