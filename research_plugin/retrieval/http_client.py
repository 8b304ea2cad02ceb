"""Async client for Search-R1's retrieval server API, on aiohttp (httpx's async client was measured as a bottleneck).

Request: ``POST {url}`` with ``{"queries": [...], "topk": k, "return_scores": true}``. Response:
``{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}``, one list per query; entries without
``score``, and entries that are the document itself (FlashRAG style), are accepted too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from yarl import URL

from .base import Passage, SearchResult
from .remote import RemoteRetriever, RequestFailed


class HTTPRetriever(RemoteRetriever):
    """Retrieval over HTTP with per-attempt timeouts and bounded retries; failures become error results.

    Retries, backoff and the per-loop sessions are :class:`~.remote.RemoteRetriever`'s; malformed responses
    are not retried. A bearer token is read from the environment variable named by ``token_env`` at construction.
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
        all_headers = dict(headers or {})
        token = os.environ.get(token_env) if token_env else None
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        super().__init__(
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            headers=all_headers,
            secrets=[token] if token else (),
        )
        self.url = url

    def describe(self) -> str:
        url = URL(self.url).with_user(None)  # drops any user:password
        return f"http(url={url}, timeout={self.timeout:g}s, max_retries={self.max_retries})"

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        payload = {"queries": queries, "topk": top_k, "return_scores": True}
        try:
            return await self._request("POST", self.url, lambda body: _parse(body, len(queries)), json=payload)
        except RequestFailed as e:
            return [SearchResult([], error=str(e)) for _ in queries]


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
