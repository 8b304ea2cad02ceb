"""JSON POSTs to OpenAI-compatible servers with bounded retries; a request that fails for good raises
:class:`RequestFailed` with a short reason. Headers (API keys) never appear in messages."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from ..http_retry import RequestFailed, request_with_retries

__all__ = ["RequestFailed", "api_url", "post_json"]


def api_url(base: str, path: str) -> str:
    """``base`` (``http://host:port``, ``.../v1`` or ``.../v1/<endpoint>``) turned into ``.../v1/<path>``."""
    base = base.rstrip("/")
    for suffix in ("/completions", "/chat/completions", "/models"):
        if base.endswith("/v1" + suffix):
            base = base[: -len(suffix)]
    if not base.endswith("/v1"):
        base += "/v1"
    return f"{base}/{path}"


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
    """The decoded JSON answer to a 200 response, with the package's retry policy
    (:func:`research_plugin.http_retry.request_with_retries`); error messages carry the start of the server's body."""
    try:
        return await request_with_retries(
            session,
            "POST",
            url,
            json.loads,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            show_body=True,
            json=payload,
            headers=headers,
        )
    except RequestFailed as e:
        raise RequestFailed(f"POST {url}: {e}") from None
