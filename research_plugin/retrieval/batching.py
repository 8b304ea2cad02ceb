"""Cross-request micro-batching in front of a :class:`Retriever`, with an LRU result cache and a bounded queue.

Every query of every request becomes one pending item keyed by its normalised text and ``top_k``. A single
batcher task takes what is pending (up to ``max_batch``) as soon as the backend is free, so queries that arrive
during a search form the next batch. The backend counts as free while fewer than ``max_in_flight`` batches are
being searched (by default the retriever's ``parallel_batches``: 1 for an in-process index, more for one whose
stages run on different devices; the server sets one per process of a pool of search processes). The backend is
called once for the distinct queries of a batch at the batch's largest ``top_k``, and each item's answer is cut to
its own ``top_k``. Identical queries are searched once: a cached answer is returned at once, and a query already
queued or being searched is joined rather than queued again.

Under steady load, batching what arrived during the last search splits the clients into cohorts that alternate,
each searched in a part-sized batch: a client whose answer just came back asks again a moment later, after the
next batch has started. So the batcher tracks the demand: when a batch starts or ends, the queries being searched
plus those waiting are the clients active; a batch waits for the last second's largest demand divided over the
batches in flight (all of it for a backend that searches one batch at a time, half of it for two), flushing on
size or on time. The wait is adapted to the backend: a quarter of its measured service time (a client comes back
within an HTTP round trip; a slow backend makes a bigger batch worth more), at most ``max_window_s`` (however slow
the backend, the clients come back within a round trip, so a longer wait only adds latency) and at least
``batch_window_s`` (0: never wait). The service time is a moving average over the batches the backend answered
without an error (a failure is no measure of it), starting from zero rather than from the first, cold, batch. An
idle server (a demand of one query) never waits. ``bench/retrieval`` measures the service against the backend
alone, on real indexes and on a backend of set latency (a GPU box's regime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import NamedTuple

from cachetools import LRUCache

from .base import Passage, Retriever

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue has no room for a request's queries; retry later."""


class BackendError(Exception):
    """The backend failed for a query (it raised, or returned an error result)."""


class _Key(NamedTuple):
    query: str
    top_k: int
    index_id: str


@dataclass
class _Item:
    key: _Key
    future: asyncio.Future[tuple[Passage, ...]]


@dataclass
class BatchStats:
    """Counters since start; ``sizes`` maps a backend batch size (distinct queries) to how many batches had it."""

    batches: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    backend_failures: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    joined_in_flight: int = 0


def normalise(query: str) -> str:
    """Lowercase with runs of whitespace folded to one space and ends stripped: the form searched and cached."""
    return " ".join(query.lower().split())


class Batcher:
    """Batches, deduplicates and caches searches on ``retriever``; use inside one event loop, between
    :meth:`start` and :meth:`stop`."""

    def __init__(
        self,
        retriever: Retriever,
        *,
        index_id: str,
        max_batch: int = 256,
        batch_window_s: float = 0.003,
        max_window_s: float = 0.05,
        max_queue: int = 1024,
        cache_size: int = 100_000,
        max_in_flight: int | None = None,
    ) -> None:
        if max_in_flight is None:
            max_in_flight = retriever.parallel_batches
        if (
            max_batch < 1
            or max_queue < 1
            or batch_window_s < 0
            or max_window_s < 0
            or cache_size < 0
            or max_in_flight < 1
        ):
            raise ValueError(
                "need max_batch >= 1, max_queue >= 1, batch_window_s >= 0, max_window_s >= 0, cache_size >= 0 "
                "and max_in_flight >= 1"
            )
        self.retriever = retriever
        self.index_id = index_id
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.max_window_s = max_window_s
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._cache: LRUCache[_Key, tuple[Passage, ...]] | None = LRUCache(cache_size) if cache_size else None
        self._pending: deque[_Item] = deque()
        self._in_flight: dict[_Key, asyncio.Future[tuple[Passage, ...]]] = {}
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self.max_in_flight = max_in_flight
        self._searching = 0  # queries in the batches being searched
        # (time, demand) of the last second's batch ends that no later one matched: the first is the largest
        self._recent: deque[tuple[float, int]] = deque()
        self._service_s = 0.0  # moving average of a successful batch's search time
        self._want = 1  # queries worth waiting for before a batch
        self._task: asyncio.Task[None] | None = None
        self._searches: set[asyncio.Task[None]] = set()

    @property
    def queue_depth(self) -> int:
        """Queries waiting for a batch (not counting the batch being searched)."""
        return len(self._pending)

    def cache_info(self) -> dict[str, int]:
        if self._cache is None:
            return {"size": 0, "capacity": 0}
        return {"size": len(self._cache), "capacity": int(self._cache.maxsize)}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="retrieval-batcher")

    async def stop(self) -> None:
        """Stop the batcher task; requests still waiting fail with :class:`BackendError`."""
        for task in [self._task, *self._searches]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for future in self._in_flight.values():
            if not future.done():
                future.set_exception(BackendError("server is shutting down"))
        self._pending.clear()
        self._in_flight.clear()

    async def search(self, queries: list[str], top_k: int) -> list[tuple[Passage, ...]]:
        """The passages for each query, best first; raises :class:`Overloaded` without queueing anything when the
        queue lacks room for this request's new queries, and :class:`BackendError` when the backend failed."""
        keys = [_Key(normalise(q), top_k, self.index_id) for q in queries]
        found: dict[_Key, tuple[Passage, ...]] = {}
        waits: dict[_Key, asyncio.Future[tuple[Passage, ...]]] = {}
        new: list[_Key] = []
        for key in dict.fromkeys(keys):
            cached = self._cache.get(key) if self._cache is not None else None
            if cached is not None:
                found[key] = cached
                self.stats.cache_hits += 1
            elif key in self._in_flight:
                waits[key] = self._in_flight[key]
                self.stats.joined_in_flight += 1
            else:
                new.append(key)
        if len(self._pending) + len(new) > self.max_queue:
            raise Overloaded(f"{len(self._pending)} queries already queued (max {self.max_queue})")
        self.stats.cache_misses += len(new)
        loop = asyncio.get_running_loop()
        for key in new:
            future = waits[key] = self._in_flight[key] = loop.create_future()
            self._pending.append(_Item(key, future))
        if new:
            self._arrived.set()
            if len(self._pending) >= self._want:
                self._full.set()
        # shield: a request that goes away must not cancel a search other requests share
        if len(waits) == 1:  # the common single-query request, without gather's extra futures
            ((key, future),) = waits.items()
            found[key] = await asyncio.shield(future)
        elif waits:
            answers = await asyncio.gather(*(asyncio.shield(f) for f in waits.values()))
            found.update(zip(waits, answers))
        return [found[key] for key in keys]

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            await self._slots.acquire()
            # the active clients split evenly over the batches in flight
            self._want = -(-self._recent_load() // self.max_in_flight)
            if self.batch_window_s > 0 and len(self._pending) < self._want:
                self._full.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.window_s())
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            self._searching += len(batch)
            self._note_demand(self._searching + len(self._pending))
            if not self._pending:
                self._arrived.clear()
            search = asyncio.get_running_loop().create_task(self._search_batch(batch))
            self._searches.add(search)
            search.add_done_callback(self._searches.discard)

    def window_s(self) -> float:
        """How long a batch waits for the demand: a quarter of the measured service time, at most
        ``max_window_s``, at least ``batch_window_s``."""
        return max(self.batch_window_s, min(self.max_window_s, 0.25 * self._service_s))

    def _note_demand(self, demand: int) -> None:
        while self._recent and self._recent[-1][1] <= demand:
            self._recent.pop()
        self._recent.append((time.monotonic(), demand))

    def _recent_load(self) -> int:
        """The largest demand of the last second (at most ``max_batch``; 1 when there was none)."""
        horizon = time.monotonic() - 1.0
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        return min(self.max_batch, self._recent[0][1] if self._recent else 1)

    async def _search_batch(self, batch: list[_Item]) -> None:
        try:
            await self._search_and_answer(batch)
        finally:
            # the clients active now: this batch's, which will ask again, those of the other batches in flight,
            # and those already waiting
            self._note_demand(self._searching + len(self._pending))
            self._searching -= len(batch)
            self._slots.release()

    async def _search_and_answer(self, batch: list[_Item]) -> None:
        queries = list(dict.fromkeys(item.key.query for item in batch))
        self.stats.batches += 1
        self.stats.sizes[len(queries)] += 1
        start = time.monotonic()
        try:
            results = await self.retriever.search(queries, max(item.key.top_k for item in batch))
        except Exception as e:  # a backend bug fails this batch only; the batcher lives on
            logger.exception("retrieval backend %s failed on a batch of %d", self.retriever.describe(), len(queries))
            self.stats.backend_failures += 1
            for item in batch:
                self._finish(item, BackendError(f"retrieval backend failed ({type(e).__name__})"))
            return
        if not any(result.error for result in results):
            self._service_s = 0.8 * self._service_s + 0.2 * (time.monotonic() - start)
        by_query = dict(zip(queries, results))
        for item in batch:
            result = by_query[item.key.query]
            if result.error:
                self._finish(item, BackendError(result.error))
                continue
            passages = tuple(result.passages[: item.key.top_k])
            if self._cache is not None:
                self._cache[item.key] = passages
            self._finish(item, passages)

    def _finish(self, item: _Item, outcome: tuple[Passage, ...] | BackendError) -> None:
        self._in_flight.pop(item.key, None)
        if isinstance(outcome, BackendError):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(outcome)
