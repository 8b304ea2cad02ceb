"""Local HTTP plumbing for tests: an aiohttp app or an ASGI app (uvicorn) served on 127.0.0.1 from a background
thread, free ports, polling, plain JSON clients, and one-shot searches with a remote retriever."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import uvicorn
from aiohttp import web

from research_plugin.retrieval import Retriever, SearchResult


class LocalApp:
    """Serves ``app`` on 127.0.0.1 (ephemeral port) from its own event loop in a daemon thread, until :meth:`stop`.

    Access logs are off: they would show request lines (query strings with API keys included) in ``caplog``.
    """

    def __init__(self, app: web.Application) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(app),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), f"{type(self).__name__} did not start"

    async def _serve(self, app: web.Application) -> None:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], *, timeout: float, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(step)


def search_and_close(retriever: Retriever, queries: list[str], top_k: int = 3) -> list[SearchResult]:
    """One search in a fresh event loop, closing the retriever (its HTTP session) afterwards."""

    async def go() -> list[SearchResult]:
        try:
            return await retriever.search(queries, top_k)
        finally:
            await retriever.close()

    return asyncio.run(go())


@contextmanager
def serve(app: Any, *, wait_ready: bool = True) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (ephemeral port) in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_until(lambda: server.started, timeout=10)
        if wait_ready:
            wait_until(lambda: get(url + "/health")[0] == 200, timeout=10)
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive(), "server did not stop"


def request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, lower(resp.headers.items()), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, lower(e.headers.items()), json.loads(e.read())


def lower(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    return request(url, None, headers)


def post(url: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    return request(url, json.dumps(payload).encode(), headers)


def ok(url: str, payload: Any) -> Any:
    status, _, body = post(url, payload)
    assert status == 200, body
    return body


def post_concurrently(url: str, payloads: list[Any]) -> list[tuple[int, dict[str, str], Any]]:
    """POST all payloads at once from one aiohttp session; (status, headers, json) for each, in order; headers are
    keyed in lower case, as for :func:`request`."""

    async def go() -> list[tuple[int, dict[str, str], Any]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

            async def one(payload: Any) -> tuple[int, dict[str, str], Any]:
                async with session.post(url, json=payload) as resp:
                    return resp.status, lower(resp.headers.items()), await resp.json()

            return await asyncio.gather(*(one(p) for p in payloads))

    return asyncio.run(go())
