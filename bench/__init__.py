"""Benchmark scripts (run as ``python -m bench.<name>``); their results are rendered into docs/benchmarks.md."""
