"""Batched query encoding for the warm server: the model thread encodes every waiting query in one call.

Why: with one query per encoder call, ten concurrent clients each pay a full text-encoder call, one after the
other, on the one model thread (``engine.query.engine``). A batch of B short queries costs far less than B
single calls (one set of operator launches and weight reads for all of them), so the waiting queries are
taken together.

How: a request thread hands its query (a text, or a decoded PIL image) to ``EncodeBatcher.encode``, which
queues it and schedules a drain on the model thread. A drain takes the oldest waiting query and every other
waiting query of the same kind (text or image), at most ``max_batch``; it waits for more only while another
request is still preparing its query (decoding an uploaded image, say), and never past ``max_wait_ms`` after
the oldest one arrived — so a lone client never waits. The batch is encoded by the engine's ``encode_texts`` /
``encode_images`` (one compiled-encoder call) and each request gets its own row back with its queue wait,
the batch's encode time and the batch size (the per-stage timings the server reports in ``Server-Timing``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable

from engine.errors import ConfigError

KINDS = ("text", "image")
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 2.0
MAX_WAIT_LIMIT_MS = 1000.0


@dataclass(frozen=True)
class BatchPolicy:
    """At most ``max_batch`` queries per encoder call; a drain waits at most ``max_wait_ms`` for more."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS

    def validate(self) -> "BatchPolicy":
        if not 1 <= self.max_batch <= 1024:
            raise ConfigError(f"--batch-max must be within 1..1024, got {self.max_batch}")
        if not 0.0 <= self.max_wait_ms <= MAX_WAIT_LIMIT_MS:
            raise ConfigError(f"--batch-wait-ms must be within 0..{MAX_WAIT_LIMIT_MS:g}, got {self.max_wait_ms}")
        return self


@dataclass(frozen=True)
class Encoded:
    """One query's row of a batch: its output, and where its time went."""

    output: Any  # what the kind's encode function returned for this query
    queue_ms: float  # from being queued to its batch starting to encode
    encode_ms: float  # the whole batch's encoder call
    batch_size: int


@dataclass
class _Job:
    kind: str
    item: Any
    future: Future
    queued: float


class EncodeBatcher:
    """Collects queries from many threads and encodes them in batches on ``submit``'s thread (the model thread).

    ``submit(function)`` schedules ``function()`` on the model thread; ``encoders[kind](items)`` returns one
    output per item, in order (it runs on the model thread)."""

    def __init__(self, submit: Callable[[Callable[[], None]], Any],
                 encoders: dict[str, Callable[[list], list]], policy: BatchPolicy) -> None:
        self.policy = policy.validate()
        self._submit = submit
        self._encoders = encoders
        self._condition = threading.Condition()
        self._waiting: dict[str, deque[_Job]] = {kind: deque() for kind in KINDS}
        self._preparing = 0  # requests between encode() and queuing their item
        self._draining = False  # a drain is scheduled or running

    def encode(self, kind: str, prepare: Callable[[], Any]) -> Encoded:
        """``prepare()`` on this thread (its errors are this request's alone), then its item encoded in a batch."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        with self._condition:
            self._preparing += 1
        try:
            item = prepare()
        except BaseException:
            with self._condition:
                self._preparing -= 1
                self._condition.notify_all()
            raise
        job = _Job(kind, item, Future(), time.perf_counter())
        with self._condition:
            self._preparing -= 1
            self._waiting[kind].append(job)
            self._condition.notify_all()
            schedule = not self._draining
            self._draining = True
        if schedule:
            self._schedule()
        return job.future.result()

    def _schedule(self) -> None:
        try:
            self._submit(self._drain)
        except BaseException as error:  # the model thread is shut down: fail what waits instead of hanging
            with self._condition:
                jobs = [job for queue in self._waiting.values() for job in queue]
                for queue in self._waiting.values():
                    queue.clear()
                self._draining = False
            for job in jobs:
                job.future.set_exception(error)

    def _take(self) -> list[_Job]:
        """The next batch: the oldest waiting job's kind, after waiting (bounded) for requests still preparing."""
        with self._condition:
            heads = [queue[0] for queue in self._waiting.values() if queue]
            if not heads:
                return []
            oldest = min(heads, key=lambda job: job.queued)
            deadline = oldest.queued + self.policy.max_wait_ms / 1000
            queue = self._waiting[oldest.kind]
            while len(queue) < self.policy.max_batch and self._preparing > 0:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            return [queue.popleft() for _ in range(min(len(queue), self.policy.max_batch))]

    def _drain(self) -> None:
        jobs = self._take()
        with self._condition:  # more waiting: the next drain is queued behind this one on the model thread
            more = any(self._waiting.values())
            self._draining = more
        if more:
            self._schedule()
        if not jobs:
            return
        started = time.perf_counter()
        try:
            outputs = self._encoders[jobs[0].kind]([job.item for job in jobs])
            if len(outputs) != len(jobs):
                raise RuntimeError(f"the {jobs[0].kind} encoder returned {len(outputs)} rows for {len(jobs)}")
        except BaseException as error:  # noqa: BLE001 -- every request of the batch gets the error
            for job in jobs:
                job.future.set_exception(error)
            return
        encode_ms = (time.perf_counter() - started) * 1000
        for job, output in zip(jobs, outputs):
            job.future.set_result(Encoded(output, (started - job.queued) * 1000, encode_ms, len(jobs)))
