"""Where an indexing run spends its time: seconds per stage, summed over the run (and over Ray workers).

Stages: ``model load``, ``runtime build`` (compiling the image encoder, ``--image-runtime``), ``decode`` (read
+ mask + transform, summed over the decode workers, which run beside the encoder, so it overlaps the others),
``image encode``, ``caption encode``, ``shard write``, ``assemble`` (the Ray driver putting rows back into
shards), ``writer wait`` (the Ray driver waiting for busy shard writers), ``faiss`` (choose, train, add,
calibrate, save), ``row file`` (``rows.arrow``), ``ids check``. Rerank attention caches are not a stage:
``engine index`` does not compute them (the query engine fills ``INDEX_DIR/attention`` lazily, for the
candidates a rerank actually needs; see engine/query/rerank/features.py).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

ORDER = ("model load", "runtime build", "decode", "image encode", "caption encode", "shard write", "assemble",
         "writer wait", "faiss", "row file", "ids check")


@dataclass
class StageTimes:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + float(seconds)

    def merge(self, other: "StageTimes | dict[str, float]") -> None:
        for stage, seconds in (other.seconds if isinstance(other, StageTimes) else other).items():
            self.add(stage, seconds)

    @contextmanager
    def timed(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - started)

    def describe(self) -> str:
        names = [name for name in ORDER if name in self.seconds] + sorted(set(self.seconds) - set(ORDER))
        return ", ".join(f"{name} {self.seconds[name]:.1f} s" for name in names)
