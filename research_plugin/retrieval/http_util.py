"""Shared aiohttp plumbing of the retrievers that call remote APIs: one ``ClientSession`` per event loop, and requests
with per-attempt timeouts and bounded retries whose failures end as a :class:`RequestFailed` with a loggable reason."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from .base import Retriever

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RequestFailed(Exception):
    """A request that failed for good; the message (secrets removed) says why and after how many attempts."""


@dataclass
class _LoopSession:
    session: aiohttp.ClientSession
    stop: asyncio.Event
    owner: asyncio.Task[None]


class RemoteRetriever(Retriever):
    """Base of retrievers that make HTTP requests, with per-attempt timeouts and bounded retries.

    Connection errors, timeouts, 5xx and 429 are retried up to ``max_retries`` times with exponential backoff and
    jitter (``Retry-After`` is honoured, capped by ``max_backoff``); other 4xx are not, nor are malformed responses
    unless asked. Each ``secrets`` string is masked in every error message and log line.
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
        """``parse`` of the body of a 200 answer to ``method url`` (``kwargs`` go to aiohttp's ``request``).

        ``parse`` raises ``ValueError`` / ``TypeError`` for a malformed body. Raises :class:`RequestFailed` once
        the attempts are spent or the failure is not worth retrying.
        """
        error, attempts = "", 0
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt, retry_after))
            attempts, retry_after = attempt + 1, None
            try:
                async with self._session().request(method, url, **kwargs) as resp:
                    status, reason, body = resp.status, resp.reason or "", await resp.read()
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except asyncio.TimeoutError:
                error, retryable = f"timed out after {self.timeout:g}s", True
            except (aiohttp.ClientError, OSError) as e:
                error, retryable = f"{type(e).__name__}: {e}", True
            else:
                if status == 200:
                    try:
                        return parse(body)
                    except (ValueError, TypeError) as e:
                        error, retryable = f"malformed response: {e}", retry_malformed
                else:
                    error, retryable = f"HTTP {status} {reason}".strip(), status == 429 or status >= 500
            error = _short(self._redact(error))
            if not retryable:
                break
            logger.debug("%s: attempt %d failed: %s", self.describe(), attempts, error)
        error = f"{error} (after {attempts} attempt{'s' if attempts > 1 else ''})"
        logger.warning("%s: giving up: %s", self.describe(), error)
        raise RequestFailed(error)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _session(self) -> aiohttp.ClientSession:
        """The session of the running event loop, made on first use on that loop."""
        loop = asyncio.get_running_loop()
        entry = self._sessions.get(loop)
        if entry is None:
            for dead in [other for other in self._sessions if other.is_closed()]:
                del self._sessions[dead]
            session = aiohttp.ClientSession(headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout))
            stop = asyncio.Event()
            entry = _LoopSession(session, stop, loop.create_task(self._own(loop, session, stop)))
            self._sessions[loop] = entry
        return entry.session

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


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None when absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
