"""Web search APIs as a retriever, in the style of R1-Searcher's online search: Serper or SerpApi Google results.

Each result becomes ``Passage(id=url, title=title, text=snippet)``; an answer box and a knowledge-graph description,
when the response has them, come first. With ``fetch_pages`` the organic results' text is the visible text of their
pages instead (best effort; the snippet stays when a page cannot be had). Results are cached on disk, one JSON file per
(provider, normalised query, k, gl, hl, fetch_pages), so runs can be replayed with ``offline=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from .base import Passage, SearchResult
from .remote import RemoteRetriever, RequestFailed

logger = logging.getLogger(__name__)

_MAX_PAGE_BYTES = 2_000_000
_MAX_PAGE_CHARS = 2000


@dataclass(frozen=True)
class _Provider:
    """How to ask one search API (``request`` gives aiohttp request kwargs) and where its response keeps things."""

    endpoint: str
    method: str
    request: Callable[[str, str, int, str, str], dict[str, Any]]  # (api_key, query, k, gl, hl) -> kwargs
    organic: str
    answer_box: str
    knowledge_graph: str


PROVIDERS: dict[str, _Provider] = {
    "serper": _Provider(
        "https://google.serper.dev/search",
        "POST",
        lambda key, q, k, gl, hl: {"headers": {"X-API-KEY": key}, "json": {"q": q, "num": k, "gl": gl, "hl": hl}},
        "organic",
        "answerBox",
        "knowledgeGraph",
    ),
    "serpapi": _Provider(
        "https://serpapi.com/search.json",
        "GET",
        lambda key, q, k, gl, hl: {
            "params": {"engine": "google", "q": q, "num": k, "gl": gl, "hl": hl, "api_key": key}
        },
        "organic_results",
        "answer_box",
        "knowledge_graph",
    ),
}


class WebSearchRetriever(RemoteRetriever):
    """Google results from a web search API; failures become error results, never exceptions.

    The API key is read from the environment variable ``api_key_env`` (not needed when ``offline``); it is never
    logged, reported or cached. ``endpoint`` overrides the provider's URL. Queries of one call go out concurrently,
    at most ``max_concurrency`` at a time; identical (normalised) queries in one call share one request.
    """

    name = "web"

    def __init__(
        self,
        provider: str = "serper",
        *,
        endpoint: str | None = None,
        api_key_env: str = "SERPER_API_KEY",
        cache_dir: str | os.PathLike[str] | None = None,
        offline: bool = False,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_concurrency: int = 8,
        fetch_pages: bool = False,
        gl: str = "us",
        hl: str = "en",
    ) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown web search provider {provider!r}; known: {', '.join(sorted(PROVIDERS))}")
        self.endpoint = endpoint or PROVIDERS[provider].endpoint
        if not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must start with http:// or https://, got {self.endpoint!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if offline and cache_dir is None:
            raise ValueError("offline replay needs a cache_dir")
        api_key = os.environ.get(api_key_env, "")
        if not api_key and not offline:
            raise ValueError(f"web search ({provider}) needs an API key in the environment variable {api_key_env}")
        super().__init__(
            timeout=timeout, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff, secrets=[api_key]
        )
        self.provider = provider
        self.offline = offline
        self.max_concurrency = max_concurrency
        self.fetch_pages = fetch_pages
        self.gl, self.hl = gl, hl
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._api_key = api_key

    def describe(self) -> str:
        endpoint = URL(self.endpoint).with_user(None).with_query(None)
        cache = f", cache_dir={self.cache_dir}" if self.cache_dir else ""
        return f"web(provider={self.provider}, endpoint={endpoint}{cache}{', offline' if self.offline else ''})"

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(query: str) -> SearchResult:
            async with limit:
                return await self._search_one(query, top_k)

        unique = list(dict.fromkeys(_normalise(q) for q in queries))
        results = dict(zip(unique, await asyncio.gather(*(one(q) for q in unique))))
        return [results[_normalise(q)] for q in queries]

    async def _search_one(self, query: str, top_k: int) -> SearchResult:
        if not query:
            return SearchResult([])
        path = self._cache_path(query, top_k)
        cached = _load(path) if path else None
        if cached is not None:
            return SearchResult(cached)
        if self.offline:
            return SearchResult([], error=f"offline: no cached result for {query!r}")
        provider = PROVIDERS[self.provider]
        try:
            featured, organic = await self._request(
                provider.method,
                self.endpoint,
                lambda body: _parse(json.loads(body), provider),
                retry_malformed=True,
                **provider.request(self._api_key, query, top_k, self.gl, self.hl),
            )
        except RequestFailed as e:
            return SearchResult([], error=str(e))
        featured = featured[:top_k]
        organic = organic[: top_k - len(featured)]
        if self.fetch_pages:
            texts = await asyncio.gather(*(self._page_text(p.id) for p in organic))
            organic = [replace(p, text=text) if text else p for p, text in zip(organic, texts)]
        passages = featured + organic
        if path:
            self._store(path, query, top_k, passages)
        return SearchResult(passages)

    def _cache_path(self, query: str, top_k: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = [self.provider, query.casefold(), top_k, self.gl, self.hl, self.fetch_pages]
        return self.cache_dir / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()}.json"

    def _store(self, path: Path, query: str, top_k: int, passages: list[Passage]) -> None:
        """Write one cache file atomically (temp file + rename); a failure is logged, not raised."""
        record = {
            "provider": self.provider,
            "query": query,
            "k": top_k,
            "gl": self.gl,
            "hl": self.hl,
            "fetch_pages": self.fetch_pages,
            "timestamp": time.time(),
            "passages": [asdict(p) for p in passages],
        }
        tmp = ""
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False)
            os.replace(tmp, path)
        except OSError as e:
            logger.warning("%s: could not write cache file %s: %s", self.describe(), path, e)
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    async def _page_text(self, url: str) -> str | None:
        """The visible text of an HTML / plain-text page, cut to a passage's size; None when it cannot be had."""
        try:
            async with self._session().get(url) as resp:
                if resp.status != 200 or resp.content_type not in ("text/html", "text/plain"):
                    return None
                raw = (await resp.content.read(_MAX_PAGE_BYTES)).decode(resp.charset or "utf-8", errors="replace")
                is_html = resp.content_type == "text/html"
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError, LookupError):
            return None  # LookupError: an unknown charset
        text = " ".join((_html_text(raw) if is_html else raw).split())
        return text[:_MAX_PAGE_CHARS] or None


def _normalise(query: str) -> str:
    return " ".join(query.split())


def _load(path: Path) -> list[Passage] | None:
    """The passages of a cache file; None when it is missing or unreadable (then logged)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return [Passage(**row) for row in record["passages"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as e:
        logger.warning("ignoring unreadable cache file %s: %s", path, e)
        return None


def _parse(data: Any, provider: _Provider) -> tuple[list[Passage], list[Passage]]:
    """(answer box and knowledge-graph passages, organic passages) of a response; ``ValueError`` on a bad shape."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    featured: list[Passage] = []
    box = data.get(provider.answer_box)
    if isinstance(box, dict):
        text = " ".join(filter(None, (_str(box, "answer"), _str(box, "snippet"))))
        if text:
            featured.append(Passage(_str(box, "link"), _str(box, "title"), text))
    graph = data.get(provider.knowledge_graph)
    if isinstance(graph, dict) and _str(graph, "description"):
        source = graph.get("source")
        link = _str(graph, "descriptionLink") or (_str(source, "link") if isinstance(source, dict) else "")
        featured.append(Passage(link, _str(graph, "title"), _str(graph, "description")))
    organic = data.get(provider.organic, [])
    if not isinstance(organic, list) or not all(isinstance(r, dict) for r in organic):
        raise ValueError(f"expected {provider.organic!r} to be a list of objects")
    return featured, [Passage(_str(r, "link"), _str(r, "title"), _str(r, "snippet")) for r in organic]


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    return value.strip() if isinstance(value, str) else ""


def _html_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return " ".join(parser.parts)


class _TextExtractor(HTMLParser):
    """Collects a page's text outside ``script`` / ``style`` / ``head`` and the like."""

    _SKIP = frozenset({"head", "script", "style", "noscript", "template", "svg"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)
