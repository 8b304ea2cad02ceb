"""Shared aiohttp plumbing of the retrievers that call remote APIs: one ``ClientSession`` per event loop, and requests
with per-attempt timeouts and bounded retries whose failures end as a :class:`RequestFailed` with a loggable reason."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from ..http_retry import RequestFailed, request_with_retries
from .base import Retriever, loop_local

T = TypeVar("T")

__all__ = ["RemoteRetriever", "RequestFailed"]


@dataclass
class _LoopSession:
    session: aiohttp.ClientSession
    stop: asyncio.Event
    owner: asyncio.Task[None]


class RemoteRetriever(Retriever):
    """Base of retrievers that make HTTP requests, with per-attempt timeouts and bounded retries.

    Retries follow ``http_retry.request_with_retries``. Each ``secrets`` string is masked in every error message and
    log line.
    Each event loop gets its own ``ClientSession``, closed by :meth:`close` or when that loop shuts down.
    """

    def __init__(
        self,
        *,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        headers: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        if timeout <= 0 or max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("need timeout > 0 and max_retries, backoff, max_backoff >= 0")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._headers = dict(headers or {})
        self._secrets = tuple(s for s in secrets if s)
        self._sessions: dict[asyncio.AbstractEventLoop, _LoopSession] = {}

    async def _request(
        self, method: str, url: str, parse: Callable[[bytes], T], *, retry_malformed: bool = False, **kwargs: Any
    ) -> T:
        """``parse`` of the body of a 200 answer to ``method url``, with this retriever's retry policy
        (``http_retry.request_with_retries``)."""
        return await request_with_retries(
            self._session(),
            method,
            url,
            parse,
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            retry_malformed=retry_malformed,
            redact=self._redact,
            label=self.describe(),
            **kwargs,
        )

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _session(self) -> aiohttp.ClientSession:
        """The session of the running event loop, made on first use on that loop."""
        return loop_local(self._sessions, self._new_session).session

    def _new_session(self, loop: asyncio.AbstractEventLoop) -> _LoopSession:
        # the attempt's timeout bounds the server (connecting, then each wait for its answer), not the wait for one
        # of the session's connections: thousands of concurrent trajectories queue here at busy moments, and timing
        # out of that queue only re-queues the request at the back (``bench/rollout_scale.py``); the search step's
        # ``search_timeout`` bounds the whole search
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
        session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        stop = asyncio.Event()
        return _LoopSession(session, stop, loop.create_task(self._own(loop, session, stop)))

    async def _own(self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        """Close ``session`` when :meth:`close` asks, or when ``asyncio.run`` cancels this task at loop shutdown."""
        try:
            await stop.wait()
        finally:
            self._sessions.pop(loop, None)
            await session.close()

    async def close(self) -> None:
        """Close this loop's session now; sessions of other live loops are closed on their own loops."""
        loop = asyncio.get_running_loop()
        for owner_loop, entry in list(self._sessions.items()):
            if owner_loop is loop:
                entry.stop.set()
                await entry.owner
            elif not owner_loop.is_closed():
                owner_loop.call_soon_threadsafe(entry.stop.set)
