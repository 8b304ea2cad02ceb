"""The ``web`` retriever (Serper / SerpApi) against a local fake that speaks both APIs on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from research_plugin.retrieval import SearchResult, build_retriever
from research_plugin.retrieval.web import WebSearchRetriever

from .local_http import LocalApp, search_and_close

KEY = "sk-test-7f3a9c1e5b"
ENV = "TEST_WEB_SEARCH_KEY"
ROUTES = {"serper": "/search", "serpapi": "/search.json"}


class FakeSearchAPI(LocalApp):
    """Serper's ``POST /search`` and SerpApi's ``GET /search.json`` plus result pages, in a background thread.

    The first word of a query picks a behaviour: ``flaky`` (two 500s first), ``ratelimited`` (one 429 with
    ``Retry-After: 0.3`` first), ``garbled`` (one non-JSON 200 first), ``broken`` (always 500), ``slow`` (3 s),
    ``busy`` (0.1 s), ``loop`` (redirects to itself); queries with ``capital`` get an answer box and knowledge graph.
    """

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()  # per path
        self.times: dict[str, list[float]] = defaultdict(list)  # per query
        self.bodies: list[dict[str, Any]] = []  # search parameters as received
        self.page_headers: list[dict[str, str]] = []
        self.in_flight = self.peak = 0

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.hits[request.path] += 1
            return await handler(request)

        app = web.Application(middlewares=[count])
        app.router.add_post("/search", self._serper)
        app.router.add_get("/search.json", self._serpapi)
        app.router.add_get("/page/{n}", self._page)
        super().__init__(app)

    async def _serper(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("X-API-KEY") != KEY:
            return web.json_response({"message": "Unauthorized.", "statusCode": 403}, status=403)
        body = await request.json()
        return await self._answer(request, "serper", body)

    async def _serpapi(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        if params.pop("api_key", None) != KEY:
            return web.json_response({"error": "Invalid API key. See https://serpapi.com/manage-api-key"}, status=401)
        return await self._answer(request, "serpapi", params)

    async def _answer(self, request: web.Request, provider: str, params: dict[str, Any]) -> web.StreamResponse:
        query = params["q"]
        self.bodies.append(params)
        self.times[query].append(time.monotonic())
        n, word = len(self.times[query]), query.split()[0]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if word in ("slow", "busy"):
                await asyncio.sleep(3 if word == "slow" else 0.1)
            if word == "broken" or (word == "flaky" and n <= 2):
                return web.Response(status=500, text="internal error")
            if word == "ratelimited" and n == 1:
                return web.Response(status=429, text="slow down", headers={"Retry-After": "0.3"})
            if word == "garbled" and n == 1:
                return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
            if word == "loop":
                raise web.HTTPFound(request.path_qs)
            return web.json_response(_response(provider, query, int(params["num"]), f"http://{request.host}"))
        finally:
            self.in_flight -= 1

    async def _page(self, request: web.Request) -> web.Response:
        self.page_headers.append(dict(request.headers))
        n = request.match_info["n"]
        if n == "2":
            return web.Response(status=404, text="not found")
        html = (
            f"<html><head><title>Page {n}</title><style>p {{color: red}}</style></head><body>"
            f"<script>var x = 1;</script><h1>Page {n}</h1>\n<p>Full   text of &amp; page {n}.</p></body></html>"
        )
        return web.Response(text=html, content_type="text/html")


def _response(provider: str, query: str, num: int, base: str) -> dict[str, Any]:
    """A trimmed but realistic response of ``provider``: ``num`` organic results (at most 10)."""
    organic = [
        {"title": f"Result {i}", "link": f"{base}/page/{i}", "snippet": f"Snippet {i} on {query}.", "position": i}
        for i in range(1, min(num, 10) + 1)
    ]
    capital = "capital" in query
    if provider == "serper":
        data: dict[str, Any] = {
            "searchParameters": {"q": query, "gl": "us", "hl": "en", "num": num, "type": "search", "engine": "google"},
            "organic": [{**r, "date": "Jan 1, 2024"} for r in organic],
            "relatedSearches": [{"query": f"{query} facts"}],
            "credits": 1,
        }
        if capital:
            data["answerBox"] = {"title": "France / Capital", "answer": "Paris"}
            data["knowledgeGraph"] = {
                "title": "Paris",
                "type": "Capital of France",
                "description": "Paris is the capital and largest city of France.",
                "descriptionSource": "Wikipedia",
                "descriptionLink": "https://en.wikipedia.org/wiki/Paris",
                "attributes": {"Population": "2.1 million"},
            }
        return data
    data = {
        "search_metadata": {"id": "65f0c0ffee", "status": "Success", "total_time_taken": 0.42},
        "search_parameters": {"engine": "google", "q": query, "gl": "us", "hl": "en", "num": str(num)},
        "organic_results": [{**r, "displayed_link": "example.org › page", "redirect_link": r["link"]} for r in organic],
    }
    if capital:
        data["answer_box"] = {
            "type": "organic_result",
            "title": "France / Capital",
            "answer": "Paris",
            "snippet": "Paris is the capital of France.",
            "link": "https://www.britannica.com/place/Paris",
        }
    return data


@pytest.fixture
def api() -> Iterator[FakeSearchAPI]:
    fake = FakeSearchAPI()
    yield fake
    fake.stop()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)


def make(api: FakeSearchAPI, provider: str = "serper", **kwargs: Any) -> WebSearchRetriever:
    options = {"timeout": 2.0, "max_retries": 3, "backoff": 0.01, "max_backoff": 1.0, **kwargs}
    return WebSearchRetriever(provider, endpoint=api.url(ROUTES[provider]), api_key_env=ENV, **options)


def test_serper_passages_in_order_with_answer_box_first(api: FakeSearchAPI) -> None:
    (r,) = search_and_close(make(api), ["capital of France"], top_k=5)
    assert r.error is None
    assert [(p.id, p.title, p.text) for p in r.passages] == [
        ("", "France / Capital", "Paris"),
        ("https://en.wikipedia.org/wiki/Paris", "Paris", "Paris is the capital and largest city of France."),
        (api.url("/page/1"), "Result 1", "Snippet 1 on capital of France."),
        (api.url("/page/2"), "Result 2", "Snippet 2 on capital of France."),
        (api.url("/page/3"), "Result 3", "Snippet 3 on capital of France."),
    ]
    assert api.bodies == [{"q": "capital of France", "num": 5, "gl": "us", "hl": "en"}]


def test_serpapi_passages_in_order_with_answer_box_first(api: FakeSearchAPI) -> None:
    (r,) = search_and_close(make(api, "serpapi", gl="de", hl="fr"), ["capital of France"], top_k=3)
    assert r.error is None
    assert [(p.id, p.title, p.text) for p in r.passages] == [
        ("https://www.britannica.com/place/Paris", "France / Capital", "Paris Paris is the capital of France."),
        (api.url("/page/1"), "Result 1", "Snippet 1 on capital of France."),
        (api.url("/page/2"), "Result 2", "Snippet 2 on capital of France."),
    ]
    assert api.bodies == [{"engine": "google", "q": "capital of France", "num": "3", "gl": "de", "hl": "fr"}]


@pytest.mark.parametrize("provider", ["serper", "serpapi"])
def test_top_k_respected(api: FakeSearchAPI, provider: str) -> None:
    plain, featured = search_and_close(make(api, provider), ["rivers", "capital of France"], top_k=1)
    assert [p.title for p in plain.passages] == ["Result 1"]
    assert [p.title for p in featured.passages] == ["France / Capital"]  # answer box first, within k
    (many,) = search_and_close(make(api, provider), ["many results"], top_k=4)
    assert [p.title for p in many.passages] == ["Result 1", "Result 2", "Result 3", "Result 4"]


@pytest.mark.parametrize(
    ("provider", "status"), [("serper", "HTTP 403 Forbidden"), ("serpapi", "HTTP 401 Unauthorized")]
)
def test_wrong_key_gives_error_without_retry(
    api: FakeSearchAPI, monkeypatch: pytest.MonkeyPatch, provider: str, status: str
) -> None:
    monkeypatch.setenv(ENV, "wrong-key")
    results = search_and_close(make(api, provider), ["a", "b"])
    assert [r.passages for r in results] == [[], []]
    assert all(r.error == f"{status} (after 1 attempt)" for r in results)
    assert api.hits[ROUTES[provider]] == 2  # one request per query, none retried


@pytest.mark.parametrize("provider", ["serper", "serpapi"])
def test_cache_hit_makes_no_request_and_replays_offline(
    api: FakeSearchAPI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, provider: str
) -> None:
    first = search_and_close(make(api, provider, cache_dir=tmp_path), ["capital of France"])
    again = search_and_close(make(api, provider, cache_dir=tmp_path), ["  Capital   of france "])
    assert again == first and first[0].error is None and len(first[0].passages) == 3
    assert api.hits[ROUTES[provider]] == 1

    (cache_file,) = tmp_path.iterdir()
    record = json.loads(cache_file.read_text())
    assert record["query"] == "capital of France" and record["provider"] == provider
    assert record["k"] == 3 and time.time() - record["timestamp"] < 60
    assert KEY not in cache_file.read_text()

    monkeypatch.delenv(ENV)  # replay needs no key
    offline = make(api, provider, cache_dir=tmp_path, offline=True)
    hit, miss = search_and_close(offline, ["capital of France", "never searched"])
    assert hit == first[0]
    assert miss.passages == [] and miss.error == "offline: no cached result for 'never searched'"
    (other_k,) = search_and_close(offline, ["capital of France"], top_k=2)
    assert other_k.error is not None
    assert api.hits[ROUTES[provider]] == 1


def test_errors_are_not_cached(api: FakeSearchAPI, tmp_path: Path) -> None:
    (r,) = search_and_close(make(api, cache_dir=tmp_path, max_retries=0), ["broken query"])
    assert r.error is not None and list(tmp_path.iterdir()) == []


def test_unreadable_cache_file_is_a_miss(api: FakeSearchAPI, tmp_path: Path) -> None:
    search_and_close(make(api, cache_dir=tmp_path), ["rivers"])
    (cache_file,) = tmp_path.iterdir()
    cache_file.write_text("{truncated")
    (r,) = search_and_close(make(api, cache_dir=tmp_path), ["rivers"])
    assert r.error is None and len(r.passages) == 3 and api.hits["/search"] == 2
    assert json.loads(cache_file.read_text())["query"] == "rivers"  # rewritten


@pytest.mark.parametrize("provider", ["serper", "serpapi"])
def test_retries_5xx_then_succeeds(api: FakeSearchAPI, provider: str) -> None:
    (r,) = search_and_close(make(api, provider), ["flaky query"])
    assert r.error is None and len(r.passages) == 3
    assert len(api.times["flaky query"]) == 3


def test_bad_json_is_retried(api: FakeSearchAPI) -> None:
    (r,) = search_and_close(make(api), ["garbled query"])
    assert r.error is None and len(r.passages) == 3
    assert len(api.times["garbled query"]) == 2


def test_gives_up_after_max_retries(api: FakeSearchAPI) -> None:
    (r,) = search_and_close(make(api, max_retries=2), ["broken query"])
    assert r == SearchResult([], error="HTTP 500 Internal Server Error (after 3 attempts)")
    assert len(api.times["broken query"]) == 3


def test_honours_retry_after(api: FakeSearchAPI) -> None:
    (r,) = search_and_close(make(api), ["ratelimited query"])
    assert r.error is None and len(r.passages) == 3
    first, second = api.times["ratelimited query"]
    assert 0.28 <= second - first < 2.0  # waited the 0.3 s asked for, not the 0.01 s backoff


def test_timeout_gives_error_in_bounded_time(api: FakeSearchAPI) -> None:
    start = time.monotonic()
    (r,) = search_and_close(make(api, timeout=0.2, max_retries=1), ["slow query"])
    assert r == SearchResult([], error="timed out after 0.2s (after 2 attempts)")
    assert time.monotonic() - start < 2.0
    assert len(api.times["slow query"]) == 2


def test_queries_go_out_concurrently_within_the_bound(api: FakeSearchAPI) -> None:
    queries = [f"busy {i}" for i in range(6)]
    start = time.monotonic()
    results = search_and_close(make(api, max_concurrency=3), [*queries, "busy 0", " busy  1 ", "", "  "])
    assert time.monotonic() - start < 0.6  # two waves of 0.1 s, not six
    assert api.peak == 3
    assert api.hits["/search"] == 6  # repeated queries share a request, blank ones make none
    assert results[6] == results[0] and results[7] == results[1]
    assert results[8] == results[9] == SearchResult([])


def test_key_never_logged_or_reported(api: FakeSearchAPI, caplog: pytest.LogCaptureFixture) -> None:
    retriever = make(api, "serpapi", max_retries=1)
    with caplog.at_level(logging.DEBUG):
        results = search_and_close(retriever, ["broken query", "loop query"])
    assert all(r.error for r in results)
    assert "TooManyRedirects" in str(results[1].error)  # aiohttp's message names the URL, key included
    assert "api_key=***" in str(results[1].error)
    reported = [caplog.text, repr(retriever), retriever.describe(), *(str(r.error) for r in results)]
    assert caplog.records and not [text for text in reported if KEY in text]


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV)
    with pytest.raises(ValueError, match=ENV):
        WebSearchRetriever(api_key_env=ENV)
    WebSearchRetriever(api_key_env=ENV, cache_dir=tmp_path, offline=True)  # replay needs no key


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known: serpapi, serper"):
        WebSearchRetriever("bing", api_key_env=ENV)
    with pytest.raises(ValueError):
        WebSearchRetriever(endpoint="127.0.0.1:1/search", api_key_env=ENV)
    with pytest.raises(ValueError, match="cache_dir"):
        WebSearchRetriever(api_key_env=ENV, offline=True)
    with pytest.raises(ValueError):
        WebSearchRetriever(api_key_env=ENV, max_concurrency=0)
    with pytest.raises(ValueError):
        asyncio.run(WebSearchRetriever(api_key_env=ENV, cache_dir=tmp_path).search(["a"], 0))


def test_fetch_pages_uses_page_text(api: FakeSearchAPI) -> None:
    (r,) = search_and_close(make(api, fetch_pages=True), ["capital of France"], top_k=5)
    assert [p.text for p in r.passages] == [
        "Paris",
        "Paris is the capital and largest city of France.",
        "Page 1 Full text of & page 1.",
        "Snippet 2 on capital of France.",  # page 2 is a 404: the snippet stays
        "Page 3 Full text of & page 3.",
    ]
    assert len(api.page_headers) == 3 and not any("X-API-KEY" in h for h in api.page_headers)


def test_build_retriever_web_spec(api: FakeSearchAPI, tmp_path: Path) -> None:
    spec = {"type": "web", "provider": "serpapi", "endpoint": api.url("/search.json"), "api_key_env": ENV}
    retriever = build_retriever({**spec, "cache_dir": str(tmp_path), "timeout": 3})
    assert isinstance(retriever, WebSearchRetriever) and retriever.timeout == 3.0
    assert retriever.describe() == f"web(provider=serpapi, endpoint={api.url('/search.json')}, cache_dir={tmp_path})"
    (r,) = search_and_close(retriever, ["rivers"], top_k=2)
    assert [p.title for p in r.passages] == ["Result 1", "Result 2"]
