"""HTTP requests with bounded retries, shared by the remote retrievers and the evaluation clients.

Connection errors, timeouts, 5xx and 429 are retried up to ``max_retries`` times with exponential backoff and jitter
(``Retry-After`` is honoured, capped by ``max_backoff``); other statuses are not, nor are malformed bodies unless
asked. A request that fails for good raises :class:`RequestFailed` whose message says why and after how many
attempts, with secrets masked by the caller's ``redact``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RequestFailed(Exception):
    """A request that failed for good; the message (secrets removed) says why and after how many attempts."""


async def request_with_retries(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    parse: Callable[[bytes], T],
    *,
    max_retries: int,
    backoff: float,
    max_backoff: float,
    retry_malformed: bool = False,
    show_body: bool = False,
    redact: Callable[[str], str] = lambda text: text,
    label: str = "",
    **kwargs: Any,
) -> T:
    """``parse`` of the body of a 200 answer to ``method url`` (``kwargs`` go to aiohttp's ``request``).

    ``parse`` raises ``ValueError`` / ``TypeError`` for a malformed body. ``show_body`` adds the start of an error
    answer's body to the message (servers explain there, e.g. an unknown model name).
    """
    error, attempts = "", 0
    retry_after: float | None = None
    for attempt in range(max_retries + 1):
        if attempt:
            await asyncio.sleep(_delay(attempt, retry_after, backoff, max_backoff))
        attempts, retry_after = attempt + 1, None
        try:
            async with session.request(method, url, **kwargs) as resp:
                status, reason, body = resp.status, resp.reason or "", await resp.read()
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            limit = session.timeout.total or session.timeout.sock_read
            error, retryable = (f"timed out after {limit:g}s" if limit else "timed out"), True
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
                text = body.decode("utf-8", "replace").strip() if show_body else ""
                error += f": {text}" if text else ""
        error = _short(redact(error))
        if not retryable:
            break
        logger.debug("%s: attempt %d failed: %s", label or url, attempts, error)
    error = f"{error} (after {attempts} attempt{'s' if attempts > 1 else ''})"
    logger.warning("%s: giving up: %s", label or redact(url), error)
    raise RequestFailed(error)


def _delay(attempt: int, retry_after: float | None, backoff: float, max_backoff: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    if retry_after is not None:
        return min(retry_after, max_backoff)
    return min(max_backoff, backoff * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


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
