"""A retriever of set latency: the timing of a real index on a machine you do not have, and made-up passages.

Each search takes ``stages`` of ``fixed_ms + per_query_ms * batch`` each, slept (so it takes no CPU, as an
accelerator would not), each stage behind its own lock: with two stages (an encoder on a GPU, a scan on the CPU)
two batches overlap, and ``parallel_batches`` says so. ``bench/retrieval`` measured the dense backend on an
H200 at 66.8 ms + 0.807 ms a query (E5-base-shaped encoder in fp16 + faiss Flat over 21M passages). Every query
gets the same ``top_k`` passages back for the same text, ``words`` words each (wiki-18's are ~100), out of as many as
wiki-18 has.

    research-plugin serve --index '{"type": "latency", "stages": [[66.8, 0.807]]}'
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import zlib

from .base import Passage, Retriever, SearchResult, loop_local

CORPUS_SIZE = 21_015_324
"""Passages the made-up corpus has (wiki-18's count): different queries rarely get the same ones."""


class LatencyRetriever(Retriever):
    """See the module docstring; ``stages``: ``[[fixed_ms, per_query_ms], ...]``."""

    name = "latency"

    def __init__(self, stages: list, words: int = 100) -> None:
        try:
            self.stages = [(float(fixed) / 1000.0, float(per_query) / 1000.0) for fixed, per_query in stages]
        except (TypeError, ValueError):
            raise ValueError(f"latency stages must be [[fixed_ms, per_query_ms], ...], not {stages!r}") from None
        if not self.stages or min(min(s) for s in self.stages) < 0 or words < 1:
            raise ValueError(f"latency stages must be non-empty and >= 0 and words >= 1, not {stages!r}, {words}")
        self.parallel_batches = len(self.stages)
        self._async_locks: dict[asyncio.AbstractEventLoop, list[asyncio.Lock]] = {}
        self._thread_locks = [threading.Lock() for _ in self.stages]
        self._text = " ".join(itertools.islice(itertools.cycle("lorem ipsum dolor sit amet".split()), words))

    def describe(self) -> str:
        return "latency(" + "; ".join(f"{f * 1e3:g} ms + {p * 1e3:g} ms/query" for f, p in self.stages) + ")"

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        locks = loop_local(self._async_locks, lambda loop: [asyncio.Lock() for _ in self.stages])
        for (fixed, per_query), lock in zip(self.stages, locks):
            async with lock:
                await asyncio.sleep(fixed + per_query * len(queries))
        return [self._result(q, top_k) for q in queries]

    def _search_sync(self, queries: list[str], top_k: int) -> list[SearchResult]:
        for (fixed, per_query), lock in zip(self.stages, self._thread_locks):
            with lock:
                time.sleep(fixed + per_query * len(queries))
        return [self._result(q, top_k) for q in queries]

    def _result(self, query: str, top_k: int) -> SearchResult:
        first = zlib.crc32(query.encode())
        ids = ((first + i) % CORPUS_SIZE for i in range(top_k))
        return SearchResult([Passage(f"p{n}", f"Passage {n}", self._text, 1.0) for n in ids])
