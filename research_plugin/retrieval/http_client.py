"""Async client for Search-R1's retrieval server API, on aiohttp (httpx's async client was measured as a bottleneck).

Request: ``POST {url}`` with ``{"queries": [...], "topk": k, "return_scores": true}``. Response:
``{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}``, one list per query; entries without
``score``, and entries that are the document itself (FlashRAG style), are accepted too.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from .base import Passage, Retriever, SearchResult

logger = logging.getLogger(__name__)


@dataclass
class _LoopSession:
    session: aiohttp.ClientSession
    stop: asyncio.Event
    owner: asyncio.Task[None]


class HTTPRetriever(Retriever):
    """Retrieval over HTTP with per-attempt timeouts and bounded retries; failures become error results.

    Connection errors, timeouts, 5xx and 429 are retried up to ``max_retries`` times with exponential backoff and
    jitter (``Retry-After`` is honoured, capped by ``max_backoff``); other 4xx and malformed responses are not.
    Each event loop gets its own ``ClientSession``, closed by :meth:`close` or when that loop shuts down.
    A bearer token is read from the environment variable named by ``token_env`` at construction.
    """

    name = "http"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        headers: Mapping[str, str] | None = None,
        token_env: str | None = "RESEARCH_PLUGIN_TOKEN",
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"retrieval url must start with http:// or https://, got {url!r}")
        if timeout <= 0 or max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("need timeout > 0 and max_retries, backoff, max_backoff >= 0")
        self.url = url
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._headers = dict(headers or {})
        token = os.environ.get(token_env) if token_env else None
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._sessions: dict[asyncio.AbstractEventLoop, _LoopSession] = {}

    def describe(self) -> str:
        url = URL(self.url).with_user(None)  # drops any user:password
        return f"http(url={url}, timeout={self.timeout:g}s, max_retries={self.max_retries})"

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        payload = {"queries": queries, "topk": top_k, "return_scores": True}
        error, retry_after, attempts = "", None, 0
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._delay(attempt, retry_after))
            attempts, retry_after = attempt + 1, None
            try:
                status, reason, body, retry_after = await self._post(payload)
            except asyncio.TimeoutError:
                error = f"timed out after {self.timeout:g}s"
            except (aiohttp.ClientError, OSError) as e:
                error = _short(f"{type(e).__name__}: {e}")
            else:
                if status == 200:
                    try:
                        return _parse(body, len(queries))
                    except (ValueError, TypeError) as e:
                        error = _short(f"malformed response: {e}")
                        break
                error = f"HTTP {status} {reason}".strip()
                if status != 429 and status < 500:
                    break
            logger.debug("%s: attempt %d failed: %s", self.describe(), attempts, error)
        error = f"{error} (after {attempts} attempt{'s' if attempts > 1 else ''})"
        logger.warning("%s: giving up: %s", self.describe(), error)
        return [SearchResult([], error=error) for _ in queries]

    async def _post(self, payload: dict[str, Any]) -> tuple[int, str, bytes, float | None]:
        async with self._session().post(self.url, json=payload) as resp:
            body = await resp.read()
            return resp.status, resp.reason or "", body, _retry_after(resp.headers.get("Retry-After"))

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


def _parse(body: bytes, n_queries: int) -> list[SearchResult]:
    """Decode a retrieval response; ``ValueError`` / ``TypeError`` when it has the wrong shape."""
    data = json.loads(body)
    rows = data.get("result") if isinstance(data, dict) else None
    if not isinstance(rows, list) or len(rows) != n_queries:
        raise ValueError(f"expected an object whose 'result' holds {n_queries} list(s)")
    return [SearchResult([_passage(entry) for entry in _as_list(row)]) for row in rows]


def _as_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of documents, got {type(value).__name__}")
    return value


def _passage(entry: Any) -> Passage:
    if not isinstance(entry, dict):
        raise ValueError(f"expected a document object, got {type(entry).__name__}")
    doc = entry.get("document", entry)
    if not isinstance(doc, dict):
        raise ValueError(f"expected a document object, got {type(doc).__name__}")
    score = entry.get("score")
    return Passage.from_record(doc, None if score is None else float(score))


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
