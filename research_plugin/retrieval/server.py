"""The retrieval HTTP server: Search-R1's ``/retrieve`` and FlashRAG's ``/search`` / ``/batch_search`` over one
:class:`~research_plugin.retrieval.batching.Batcher`, plus ``/health`` and ``/metrics``.

The index loads in a daemon thread at startup, so ``/health`` answers 503 at once and 200 once it is loaded (a
slow load never delays shutdown). With ``search_processes`` > 0 the index is loaded and searched in that many worker
processes (:class:`~research_plugin.retrieval.process_pool.ProcessPoolRetriever`), one batch in flight for each,
while this process parses HTTP. When a token is given, every endpoint but ``/health`` requires
``Authorization: Bearer <token>``. Bad requests get 400 / 413 / 422 and a ``{"detail": message}`` body.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .base import Passage, Retriever
from .batching import BackendError, Batcher, BatchStats, Overloaded
from .process_pool import ProcessPoolRetriever

logger = logging.getLogger(__name__)

SEARCH_PATHS = ("/retrieve", "/search", "/batch_search")
_KNOWN_PATHS = (*SEARCH_PATHS, "/health", "/metrics")
_RETRY_AFTER_OVERLOADED_S = 1
_RETRY_AFTER_LOADING_S = 5


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True)


class RetrieveRequest(_Strict):
    """Search-R1's request; a missing or null ``topk`` means 3, as in its server's default config."""

    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


class SearchRequest(_Strict):
    """FlashRAG's single-query request."""

    query: str
    top_n: int = 10
    return_score: bool = False


class BatchSearchRequest(_Strict):
    """FlashRAG's batch request (the field is called ``query`` there too)."""

    query: list[str]
    top_n: int = 10
    return_score: bool = False


_Model = TypeVar("_Model", bound=_Strict)
_Endpoint = Callable[[Request], Awaitable[Response]]


class Metrics:
    """Request counters by path and status, and the latencies of the last ``window`` successful searches."""

    def __init__(self, window: int = 10_000) -> None:
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.latency_ms: deque[float] = deque(maxlen=window)

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests[path if path in _KNOWN_PATHS else "other"] += 1
        self.statuses[status] += 1
        if path in SEARCH_PATHS and status == 200:
            self.latency_ms.append(seconds * 1000.0)

    def snapshot(self, batcher: Batcher | None) -> dict[str, Any]:
        stats = batcher.stats if batcher is not None else BatchStats()
        searched = sum(size * n for size, n in stats.sizes.items())
        latencies = sorted(self.latency_ms)
        pool = batcher.retriever if batcher is not None else None
        processes = (
            {"processes": pool.processes, "ready": pool.ready, "restarts": pool.restarts}
            if isinstance(pool, ProcessPoolRetriever)
            else None
        )
        return {
            "requests": dict(self.requests),
            "responses": {str(code): n for code, n in sorted(self.statuses.items())},
            "client_errors": sum(n for code, n in self.statuses.items() if 400 <= code < 500),
            "rejected_429": self.statuses[429],
            "errors": sum(n for code, n in self.statuses.items() if code >= 500),
            "queue_depth": batcher.queue_depth if batcher is not None else 0,
            "batches": {
                "count": stats.batches,
                "queries": searched,
                "mean_size": searched / stats.batches if stats.batches else 0.0,
                "max_size": max(stats.sizes, default=0),
                "histogram": _histogram(stats.sizes),
                "backend_failures": stats.backend_failures,
            },
            "cache": {
                "hits": stats.cache_hits,
                "misses": stats.cache_misses,
                "joined_in_flight": stats.joined_in_flight,
                **(batcher.cache_info() if batcher is not None else {"size": 0, "capacity": 0}),
            },
            "latency_ms": {
                "window": len(latencies),
                **{f"p{q}": _percentile(latencies, q) for q in (50, 90, 99)},
            },
            "search_processes": processes,
        }


def _histogram(sizes: Counter[int]) -> dict[str, int]:
    """Batch counts in power-of-two size buckets: ``"1"``, ``"2"``, ``"3-4"``, ``"5-8"``, ..."""
    buckets: Counter[int] = Counter()
    for size, n in sizes.items():
        buckets[1 << (size - 1).bit_length()] += n
    return {(str(hi) if hi <= 2 else f"{hi // 2 + 1}-{hi}"): buckets[hi] for hi in sorted(buckets)}


def _percentile(ordered: Sequence[float], q: int) -> float | None:
    """Nearest-rank percentile of sorted values, rounded to µs; None when there are none."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, len(ordered) * q // 100)], 3)


class _MetricsMiddleware:
    """Counts every HTTP response (auth failures and unknown paths included) and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.observe(scope["path"], status, time.perf_counter() - start)


class _DirectRoutes:
    """Calls the service's own endpoints straight from the middleware stack, past Starlette's exception middleware,
    FastAPI's exit-stack middleware and the router (a third of the server's CPU per search request, measured under
    load); an ``HTTPException`` gets FastAPI's ``{"detail": ...}`` answer. Other paths and methods (404, 405) go
    on to the app."""

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = (
            self.routes.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        )
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await endpoint(Request(scope, receive))
        except HTTPException as e:
            response = JSONResponse({"detail": e.detail}, status_code=e.status_code, headers=e.headers)
        await response(scope, receive, send)


class _State:
    """What the endpoints share: the batcher once the index is loaded, or why loading failed."""

    def __init__(self, make_batcher: Callable[[Retriever], Batcher]) -> None:
        self.make_batcher = make_batcher
        self.batcher: Batcher | None = None
        self.passages: int | None = None
        self.load_error: str | None = None

    async def load(self, factory: Callable[[], Retriever]) -> None:
        try:
            retriever = await _in_daemon_thread(factory)
        except Exception as e:
            logger.exception("could not load the index")
            self.load_error = f"{type(e).__name__}: {e}"
            return
        if isinstance(retriever, ProcessPoolRetriever):
            self.passages = retriever.passages_count
        else:
            held = getattr(retriever, "passages", None)
            self.passages = len(held) if held is not None else None
        # the index's objects live as long as the server: keep them out of every later garbage collection
        # (measured on 100k passages: full collections took ~12% of the server's time under load)
        gc.collect()
        gc.freeze()
        self.batcher = self.make_batcher(retriever)
        self.batcher.start()
        logger.info("index loaded: %s", retriever.describe())

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
            await self.batcher.retriever.close()


async def _in_daemon_thread(factory: Callable[[], Retriever]) -> Retriever:
    """``factory()`` in a daemon thread, so an index still loading never holds up shutdown."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Retriever] = loop.create_future()

    def settle(outcome: Retriever | BaseException) -> None:
        if future.done():  # cancelled at shutdown
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def work() -> None:
        outcome: Retriever | BaseException
        try:
            outcome = factory()
        except BaseException as e:  # handed to the event loop, which re-raises it there
            outcome = e
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=work, name="index-loader", daemon=True).start()
    return await future


def create_app(
    retriever: Retriever | Callable[[], Retriever],
    *,
    index_id: str,
    max_batch: int = 256,
    batch_window_ms: float = 3.0,
    max_queue: int = 1024,
    cache_size: int = 100_000,
    max_topk: int = 100,
    max_queries: int = 512,
    max_body_bytes: int = 1 << 20,
    token: str | None = None,
    search_processes: int = 0,
) -> FastAPI:
    """The server app over ``retriever``, or over what a zero-argument factory returns (called in a thread at
    startup). ``index_id`` names the index in ``/health`` and in cache keys; the other limits are per request,
    except ``max_queue`` (queries waiting for a batch, server-wide), which must be at least ``max_queries``.
    ``search_processes`` > 0 runs the factory (which must then be picklable) in that many worker processes."""
    if max_topk < 1 or max_queries < 1 or max_body_bytes < 1 or search_processes < 0:
        raise ValueError("need max_topk, max_queries and max_body_bytes >= 1 and search_processes >= 0")
    if max_queue < max_queries:
        raise ValueError(f"max_queue ({max_queue}) must be at least max_queries ({max_queries})")
    if search_processes and isinstance(retriever, Retriever):
        raise ValueError("search_processes needs a picklable retriever factory, not a loaded retriever")
    if search_processes:
        factory: Callable[[], Retriever] = partial(ProcessPoolRetriever, retriever, search_processes)
    else:
        factory = (lambda: retriever) if isinstance(retriever, Retriever) else retriever
    batcher = partial(
        Batcher,
        index_id=index_id,
        max_batch=max_batch,
        batch_window_s=batch_window_ms / 1000.0,
        max_queue=max_queue,
        cache_size=cache_size,
        max_in_flight=search_processes or None,  # None: the retriever's parallel_batches
    )
    limits = _Limits(max_topk, max_queries, max_body_bytes)
    return _Service(factory, _State(batcher), index_id, limits, token).app()


@dataclass(frozen=True)
class _Limits:
    max_topk: int
    max_queries: int
    max_body_bytes: int


class _Service:
    """The endpoints over one index: each parses and checks its request, searches through the batcher and answers
    in its API's shape. :meth:`app` wires them into FastAPI, which loads the index at startup."""

    def __init__(
        self, factory: Callable[[], Retriever], state: _State, index_id: str, limits: _Limits, token: str | None
    ) -> None:
        self.factory, self.state, self.index_id, self.limits = factory, state, index_id, limits
        self.metrics = Metrics()
        self.authorise = _bearer_check(token) if token else None

    def app(self) -> FastAPI:
        app = FastAPI(
            title="research-plugin retrieval", lifespan=self.lifespan, docs_url=None, redoc_url=None, openapi_url=None
        )
        direct: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {}
        app.add_middleware(_DirectRoutes, routes=direct)
        app.add_middleware(_MetricsMiddleware, metrics=self.metrics)  # added last: the outer one, sees every answer
        # endpoints that ``_DirectRoutes`` calls: bodies are parsed and validated here (FastAPI's per-request
        # dependency machinery cost ~30 us of the ~80 us a search request spent in the app, measured); the router
        # knows them too, so a wrong method gets its 405
        for method, path, endpoint, guarded in (
            ("POST", "/retrieve", self.retrieve, True),
            ("POST", "/search", self.flashrag_search, True),
            ("POST", "/batch_search", self.flashrag_batch_search, True),
            ("GET", "/health", self.health, False),
            ("GET", "/metrics", self.get_metrics, True),
        ):
            handle = self._guarded(endpoint) if guarded and self.authorise is not None else endpoint
            direct[(method, path)] = handle
            app.add_route(path, handle, methods=[method])
        return app

    def _guarded(self, endpoint: _Endpoint) -> _Endpoint:
        async def handle(request: Request) -> Response:
            self.authorise(request)
            return await endpoint(request)

        return handle

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(self.state.load(self.factory))
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await self.state.close()

    async def parse(self, request: Request, model: type[_Model]) -> _Model:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"request body is over {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPException(413, f"request body is over {limit} bytes")
        try:
            return model.model_validate_json(bytes(body))
        except ValidationError as e:
            errors = e.errors(include_url=False)
            message = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in errors)
            raise HTTPException(400 if errors[0]["type"] == "json_invalid" else 422, message) from None

    async def find(self, queries: list[str], top_k: int, top_k_field: str) -> list[tuple[Passage, ...]]:
        limits, state = self.limits, self.state
        if not queries:
            raise HTTPException(422, "no queries given")
        if len(queries) > limits.max_queries:
            raise HTTPException(422, f"{len(queries)} queries given; at most {limits.max_queries} per request")
        if not 1 <= top_k <= limits.max_topk:
            raise HTTPException(422, f"{top_k_field} must be between 1 and {limits.max_topk}, got {top_k}")
        if state.batcher is None:
            detail = f"index failed to load: {state.load_error}" if state.load_error else "index is loading"
            raise HTTPException(503, detail, headers={"Retry-After": str(_RETRY_AFTER_LOADING_S)})
        try:
            return await state.batcher.search(queries, top_k)
        except Overloaded as e:
            retry_after = {"Retry-After": str(_RETRY_AFTER_OVERLOADED_S)}
            raise HTTPException(429, f"overloaded: {e}", headers=retry_after) from None
        except BackendError as e:
            raise HTTPException(503, str(e)) from None

    async def retrieve(self, request: Request) -> Response:
        """Search-R1's ``/retrieve``."""
        req = await self.parse(request, RetrieveRequest)
        found = await self.find(req.queries, 3 if req.topk is None else req.topk, "topk")
        if req.return_scores:
            return _Answer({"result": [[{"document": _doc(p), "score": p.score} for p in ps] for ps in found]})
        return _Answer({"result": [[_doc(p) for p in ps] for ps in found]})

    async def flashrag_search(self, request: Request) -> Response:
        req = await self.parse(request, SearchRequest)
        (found,) = await self.find([req.query], req.top_n, "top_n")
        docs = [_doc(p) for p in found]
        return _Answer([docs, [p.score for p in found]] if req.return_score else docs)

    async def flashrag_batch_search(self, request: Request) -> Response:
        req = await self.parse(request, BatchSearchRequest)
        found = await self.find(req.query, req.top_n, "top_n")
        docs = [[_doc(p) for p in ps] for ps in found]
        return _Answer([docs, [[p.score for p in ps] for ps in found]] if req.return_score else docs)

    async def health(self, request: Request) -> Response:
        state = self.state
        if state.batcher is None:
            status = "failed" if state.load_error else "loading"
            return JSONResponse({"status": status, "index": self.index_id, "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "ok", "index": self.index_id, "passages": state.passages})

    async def get_metrics(self, request: Request) -> Response:
        return JSONResponse(self.metrics.snapshot(self.state.batcher))


class _Answer(JSONResponse):
    """A search answer, rendered by orjson in a fifth of ``JSONResponse``'s time (json's encoder was ~6% of the
    server's CPU under load): the same compact UTF-8 JSON, except that a NaN or infinite float (a score) is written
    as ``null`` where ``JSONResponse`` raises."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _doc(passage: Passage) -> dict[str, str]:
    return {"id": passage.id, "contents": passage.contents}


def _bearer_check(token: str) -> Callable[[Request], None]:
    expected = f"Bearer {token}".encode()

    def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check
