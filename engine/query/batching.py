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

Text lanes: when both text encoders are ONNX Runtime graphs on one thread each, text batches are encoded on a
pool of ``text_lanes`` threads instead of the model thread, so one batch encodes while the next gathers and a
machine's other cores are not left idle behind one encoder thread (measured: docs/benchmarks.md, load soak).
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
MAX_TEXT_LANES = 64


@dataclass(frozen=True)
class BatchPolicy:
    """At most ``max_batch`` queries per encoder call; a drain waits at most ``max_wait_ms`` for more."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    # threads that encode text batches at once when the text encoders are ONNX Runtime graphs (which, unlike
    # torch, can run beside the model thread without two thread pools fighting); 0: one per core
    text_lanes: int = 0

    def validate(self) -> "BatchPolicy":
        if not 1 <= self.max_batch <= 1024:
            raise ConfigError(f"--batch-max must be within 1..1024, got {self.max_batch}")
        if not 0.0 <= self.max_wait_ms <= MAX_WAIT_LIMIT_MS:
            raise ConfigError(f"--batch-wait-ms must be within 0..{MAX_WAIT_LIMIT_MS:g}, got {self.max_wait_ms}")
        if not 0 <= self.text_lanes <= MAX_TEXT_LANES:
            raise ConfigError(f"--batch-text-lanes must be within 0..{MAX_TEXT_LANES} (0: one per core), "
                              f"got {self.text_lanes}")
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
    """Collects queries from many threads and encodes them in batches on the threads ``submit`` runs them on.

    ``submit(function)`` schedules ``function()`` on the model thread, or ``submit`` maps a kind to its own
    scheduler (the text lanes: ``engine.query.engine``); ``encoders[kind](items)`` returns one output per item,
    in order (it runs where that kind's ``submit`` runs it). Each kind keeps its own queue, and at most one of its
    drains waits to take a batch at a time: with a pool of several threads behind a kind, one batch encodes while
    the next one gathers."""

    def __init__(self, submit: Callable[[Callable[[], None]], Any] | dict[str, Callable[[Callable[[], None]], Any]],
                 encoders: dict[str, Callable[[list], list]], policy: BatchPolicy) -> None:
        self.policy = policy.validate()
        self._submit = submit if isinstance(submit, dict) else {kind: submit for kind in KINDS}
        self._encoders = encoders
        self._condition = threading.Condition()
        self._waiting: dict[str, deque[_Job]] = {kind: deque() for kind in KINDS}
        self._preparing = {kind: 0 for kind in KINDS}  # requests between encode() and queuing their item
        self._pending = {kind: False for kind in KINDS}  # a drain is scheduled and has not taken its batch yet

    def encode(self, kind: str, prepare: Callable[[], Any]) -> Encoded:
        """``prepare()`` on this thread (its errors are this request's alone), then its item encoded in a batch."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        with self._condition:
            self._preparing[kind] += 1
        try:
            item = prepare()
        except BaseException:
            with self._condition:
                self._preparing[kind] -= 1
                self._condition.notify_all()
            raise
        job = _Job(kind, item, Future(), time.perf_counter())
        with self._condition:
            self._preparing[kind] -= 1
            self._waiting[kind].append(job)
            self._condition.notify_all()
            schedule = not self._pending[kind]
            self._pending[kind] = True
        if schedule:
            self._schedule(kind)
        return job.future.result()

    def _schedule(self, kind: str) -> None:
        try:
            self._submit[kind](lambda: self._drain(kind))
        except BaseException as error:  # the encoding thread is shut down: fail what waits instead of hanging
            with self._condition:
                jobs = list(self._waiting[kind])
                self._waiting[kind].clear()
                self._pending[kind] = False
            for job in jobs:
                job.future.set_exception(error)

    def _take(self, kind: str) -> list[_Job]:
        """The next batch of ``kind``, after waiting (bounded) for requests of that kind still preparing."""
        with self._condition:
            queue = self._waiting[kind]
            if not queue:
                return []
            deadline = queue[0].queued + self.policy.max_wait_ms / 1000
            while len(queue) < self.policy.max_batch and self._preparing[kind] > 0:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            return [queue.popleft() for _ in range(min(len(queue), self.policy.max_batch))]

    def _drain(self, kind: str) -> None:
        jobs = self._take(kind)
        with self._condition:  # more waiting: the next drain is scheduled (behind this one on a single thread)
            more = bool(self._waiting[kind])
            self._pending[kind] = more
        if more:
            self._schedule(kind)
        if not jobs:
            return
        started = time.perf_counter()
        try:
            outputs = self._encoders[kind]([job.item for job in jobs])
            if len(outputs) != len(jobs):
                raise RuntimeError(f"the {kind} encoder returned {len(outputs)} rows for {len(jobs)}")
        except BaseException as error:  # noqa: BLE001 -- every request of the batch gets the error
            for job in jobs:
                job.future.set_exception(error)
            return
        encode_ms = (time.perf_counter() - started) * 1000
        for job, output in zip(jobs, outputs):
            job.future.set_result(Encoded(output, (started - job.queued) * 1000, encode_ms, len(jobs)))
