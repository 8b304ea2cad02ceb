"""The servers measured, each in its own spawned process: ours (``create_app``), the per-request baseline, a
trivial app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import socket
import threading
import time
from typing import Any

# FastAPI resolves the endpoints' (string) annotations in this module's globals, so what they name lives here
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from . import HOST, TOP_K
from .backends import make_backend

# servers (each in its own spawned process)


def _ours_app(spec: dict[str, Any], search_processes: int) -> Any:
    from functools import partial

    from research_plugin.retrieval.server import create_app

    index_id = spec.get("index_dir", spec["type"])
    return create_app(partial(make_backend, spec), index_id=index_id, cache_size=0, search_processes=search_processes)


class RetrieveRequest(BaseModel):
    """Search-R1's ``/retrieve`` body, for the baseline."""

    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


def _baseline_app(spec: dict[str, Any]) -> Any:
    """The common design: a sync FastAPI endpoint (so FastAPI runs it in its threadpool) that searches the backend
    once per request, answering through FastAPI's router with ``JSONResponse``. Same response shape as ours, which
    dispatches past the router and renders with orjson: (c) differs in request handling and in serialisation."""
    retriever: Any = make_backend(spec)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/retrieve")
    def retrieve(req: RetrieveRequest) -> JSONResponse:
        # the backend's synchronous search (what its async search runs in a thread), one request at a time
        found = retriever._search_sync(req.queries, req.topk or TOP_K)
        docs = [[{"id": p.id, "contents": p.contents} for p in r.passages] for r in found]
        return JSONResponse({"result": docs})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


_TRIVIAL_BODY = json.dumps({"result": [[{"id": str(i), "contents": '"T"\n' + "word " * 100} for i in range(TOP_K)]]})


def _trivial_app() -> Any:
    """A FastAPI ``/retrieve`` that reads the body and answers a fixed ~1.5 KB result: client + HTTP-stack floor."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    body = _TRIVIAL_BODY.encode()

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _server_main(kind: str, spec: dict[str, Any], port: int, search_processes: int) -> None:
    import uvicorn
    from tqdm.std import tqdm as std_tqdm

    # bm25s makes a (disabled) tqdm per search, and tqdm's default lock is a multiprocessing semaphore, which
    # leaks (a resource_tracker warning) when uvicorn ends by re-raising SIGTERM: a thread lock is enough here
    std_tqdm.set_lock(threading.RLock())
    logging.basicConfig(level=logging.WARNING)
    makers = {"ours": lambda: _ours_app(spec, search_processes), "baseline": lambda: _baseline_app(spec)}
    app = makers.get(kind, _trivial_app)()
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """A uvicorn server in a spawned process (not a daemon: it may start search processes of its own);
    ``with Server(...) as server:`` waits until ``/health`` is 200."""

    def __init__(
        self, kind: str, spec: dict[str, Any] | None, search_processes: int = 0, start_timeout: float = 300.0
    ) -> None:
        self.kind, self.spec, self.search_processes = kind, spec or {}, search_processes
        self.start_timeout = start_timeout
        self.port = _free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.proc: mp.process.BaseProcess | None = None

    def __enter__(self) -> Server:
        ctx = mp.get_context("spawn")
        args = (self.kind, self.spec, self.port, self.search_processes)
        self.proc = ctx.Process(target=_server_main, args=args, daemon=False)
        self.proc.start()
        asyncio.run(self._wait_healthy())
        return self

    async def _wait_healthy(self) -> None:
        import aiohttp

        deadline = time.monotonic() + self.start_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if not self.proc.is_alive():
                    raise RuntimeError(f"{self.kind} server exited with code {self.proc.exitcode}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(self.base + "/health") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.kind} server not healthy after {self.start_timeout} s")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the server process (all its threads) and its search processes."""
        import psutil

        assert self.proc is not None and self.proc.pid is not None
        main = psutil.Process(self.proc.pid)
        total = 0.0
        for proc in [main, *main.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(15)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
