"""Local HTTP plumbing for tests: an aiohttp app served on 127.0.0.1 from a background thread, free ports, polling,
and one-shot searches with a remote retriever."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

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
