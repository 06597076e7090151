"""A stand-in for QueryEngine in server tests: what the HTTP layer needs, with a search that can be slow."""

from __future__ import annotations

import time
from pathlib import Path


class FakeEngine:
    """What the server needs of a QueryEngine, with a search that can be made slow."""

    image_count = 3
    fingerprint = "f" * 64
    text_query_encoder = None
    root = Path("fake-index")

    def __init__(self) -> None:
        self.delay = 0.0

    def search(self, request):
        from engine.query.request import QueryResult

        time.sleep(self.delay)
        return QueryResult(query=request.describe(), target=request.target, k=request.k, where=request.where,
                           rerank=request.rerank)

    def close(self) -> None:
        pass
