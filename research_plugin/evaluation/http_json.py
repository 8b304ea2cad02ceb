"""JSON POSTs to OpenAI-compatible servers with bounded retries; a request that fails for good raises
:class:`RequestFailed` with a short reason. Headers (API keys) never appear in messages."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp


def api_url(base: str, path: str) -> str:
    """``base`` (``http://host:port``, ``.../v1`` or ``.../v1/<endpoint>``) turned into ``.../v1/<path>``."""
    base = base.rstrip("/")
    for suffix in ("/completions", "/chat/completions", "/models"):
        if base.endswith("/v1" + suffix):
            base = base[: -len(suffix)]
    if not base.endswith("/v1"):
        base += "/v1"
    return f"{base}/{path}"


class RequestFailed(Exception):
    """A request that failed for good; the message says why and after how many attempts."""


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    max_retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
) -> Any:
    """The decoded JSON answer to a 200 response.

    Connection errors, timeouts (the session's), 429 and 5xx are retried up to ``max_retries`` times with
    exponential backoff and jitter; other statuses and bodies that are not JSON fail at once.
    """
    error, attempt = "", 0
    for attempt in range(1, max_retries + 2):
        if attempt > 1:
            await asyncio.sleep(min(max_backoff, backoff * 2 ** (attempt - 2)) * random.uniform(0.5, 1.0))
        try:
            async with session.post(url, json=payload, headers=headers) as resp:
                status, body = resp.status, await resp.read()
        except asyncio.TimeoutError:
            error, retry = "timed out", True
        except (aiohttp.ClientError, OSError) as e:
            error, retry = f"{type(e).__name__}: {e}", True
        else:
            if status == 200:
                try:
                    return json.loads(body)
                except ValueError as e:
                    error, retry = f"response is not JSON: {e}", False
            else:
                text = body.decode("utf-8", "replace").strip()
                error, retry = f"HTTP {status}: {text[:300]}", status == 429 or status >= 500
        if not retry:
            break
    raise RequestFailed(f"POST {url}: {error} (after {attempt} attempt{'s' if attempt > 1 else ''})")
