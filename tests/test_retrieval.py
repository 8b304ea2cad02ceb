"""Retrieval: passage parsing, BM25 (in-process, persisted index), the HTTP client against real local servers,
and the spec registry / cache."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

import research_plugin.retrieval as retrieval
from research_plugin.retrieval import (
    BM25Retriever,
    HTTPRetriever,
    Passage,
    Retriever,
    SearchResult,
    build_retriever,
    built_retriever,
    check_spec,
    get_retriever,
    iter_corpus,
)

from .corpora import TOPICS, to_passages, write_corpus
from .local_http import LocalApp, search_and_close


def search(retriever: Retriever, queries: list[str], top_k: int = 3) -> list[SearchResult]:
    return asyncio.run(retriever.search(queries, top_k))


def ids(result: SearchResult) -> list[str]:
    return [p.id for p in result.passages]


# ---------------------------------------------------------------- passages and corpora


def test_from_contents_wiki18_format() -> None:
    p = Passage.from_contents("7", '"Quessa River"\nThe Quessa River is long.\nSecond line.', score=1.5)
    assert p == Passage("7", "Quessa River", "The Quessa River is long.\nSecond line.", 1.5)
    assert p.contents == '"Quessa River"\nThe Quessa River is long.\nSecond line.'


@pytest.mark.parametrize(
    ("contents", "title", "text"),
    [
        ("Plain Title\nbody text", "Plain Title", "body text"),  # unquoted first line
        ("just one line of text", "", "just one line of text"),  # no newline
        ('"Quoted" but one line', "", '"Quoted" but one line'),
        ("", "", ""),
        ('"Half quoted\ntext', '"Half quoted', "text"),
        ('"The "Boss" album"\ntext', 'The "Boss" album', "text"),  # inner quotes kept
        ('"Title"\n', "Title", ""),
        ('""\ntext', "", "text"),
    ],
)
def test_from_contents_malformed_never_raises(contents: str, title: str, text: str) -> None:
    p = Passage.from_contents("x", contents)
    assert (p.title, p.text) == (title, text)


@given(title=st.text().filter(lambda t: "\n" not in t), text=st.text())
def test_contents_round_trips(title: str, text: str) -> None:
    p = Passage("1", title, text)
    assert Passage.from_contents("1", p.contents) == p


def test_from_record_both_formats() -> None:
    assert Passage.from_record({"id": 3, "contents": '"T"\nbody'}) == Passage("3", "T", "body")
    assert Passage.from_record({"id": "a", "title": "T", "text": "body"}, score=2.0) == Passage("a", "T", "body", 2.0)
    assert Passage.from_record({"text": "no id or title"}) == Passage("", "", "no id or title")
    with pytest.raises(ValueError):
        Passage.from_record({"id": "1", "title": "only a title"})


def test_iter_corpus_skips_and_reports_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"id": "1", "contents": '"A"\nalpha'}),
                "{not json",
                "",
                json.dumps(["a", "list"]),
                json.dumps({"id": "4", "title": "D", "text": "delta"}),
                json.dumps({"id": "5"}),
            ]
        )
    )
    with caplog.at_level(logging.WARNING, logger="research_plugin.retrieval"):
        passages = list(iter_corpus(path))
    assert passages == [Passage("1", "A", "alpha"), Passage("4", "D", "delta")]
    log = caplog.text
    assert "c.jsonl:2:" in log and "c.jsonl:4:" in log and "c.jsonl:6:" in log
    assert "skipped 3 bad line(s), kept 2 passage(s)" in log


def test_iter_corpus_without_valid_rows_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("garbage\n\n[1]\n")
    with pytest.raises(ValueError, match="no valid rows"):
        list(iter_corpus(path))


# ---------------------------------------------------------------- BM25


def test_bm25_ranks_source_passage_first(bm25: BM25Retriever) -> None:
    queries = [" ".join(text.split()[-6:]) for _, text in TOPICS]
    results = search(bm25, queries, top_k=3)
    assert [r.passages[0].id for r in results] == [f"doc{i}" for i in range(len(TOPICS))]
    for r in results:
        assert r.error is None
        scores = [p.score or 0.0 for p in r.passages]
        assert all(isinstance(p.score, float) and p.score > 0 for p in r.passages)
        assert scores == sorted(scores, reverse=True)
    assert results[0].passages[0].title == "Volcano" and results[0].passages[0].text == TOPICS[0][1]


def test_bm25_stems_queries_like_the_corpus(bm25: BM25Retriever) -> None:
    (r,) = search(bm25, ["erupting volcanoes"], top_k=1)  # corpus says "volcano"
    assert ids(r) == ["doc0"]


def test_bm25_top_k_respected_and_capped(bm25: BM25Retriever) -> None:
    common = "the is a of and with"  # only stopwords ...
    assert search(bm25, [common])[0].passages == []
    (r3,) = search(bm25, ["water ground air light"], top_k=3)
    assert len(r3.passages) == 3
    (r1,) = search(bm25, ["water ground air light"], top_k=1)
    assert ids(r1) == ids(r3)[:1]
    (big,) = search(bm25, ["water ground air light"], top_k=10_000)
    assert 3 <= len(big.passages) <= len(TOPICS)


def test_bm25_batch_order_preserved(bm25: BM25Retriever) -> None:
    order = [5, 0, 17, 5, 12, 3]
    results = search(bm25, [TOPICS[i][1] for i in order], top_k=2)
    assert [r.passages[0].id for r in results] == [f"doc{i}" for i in order]


def test_bm25_empty_and_unknown_queries_give_empty_results(bm25: BM25Retriever) -> None:
    results = search(bm25, ["", "   ", "the of and", "zxqv wombleflap", "magma lava"], top_k=3)
    assert [r.passages for r in results[:4]] == [[], [], [], []]
    assert all(r.error is None for r in results)
    assert ids(results[4])[0] == "doc0"


def test_bm25_argument_errors(bm25: BM25Retriever) -> None:
    assert search(bm25, []) == []
    for bad in (0, -1):
        with pytest.raises(ValueError):
            search(bm25, ["piano"], top_k=bad)
    with pytest.raises(TypeError):
        search(bm25, "piano")  # type: ignore[arg-type]


def test_bm25_concurrent_searches_agree(bm25: BM25Retriever) -> None:
    async def many() -> list[list[SearchResult]]:
        return await asyncio.gather(*(bm25.search([TOPICS[i % 7][1]], 2) for i in range(40)))

    results = asyncio.run(many())
    assert [r[0].passages[0].id for r in results] == [f"doc{i % 7}" for i in range(40)]


def test_bm25_from_passage_list() -> None:
    (r,) = search(BM25Retriever(to_passages(id_format="{}")), ["felt hammers strike strings"], top_k=1)
    assert ids(r) == ["2"]


def test_bm25_index_dir_saves_then_loads(corpus_path: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    queries = ["magma chamber", "wild yeast bread", "eight arms", "", "north needle"]
    built = BM25Retriever(corpus_path, index_dir=index_dir)
    assert not built.loaded_from_index
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["passages"] == len(TOPICS)
    assert manifest["corpus"]["path"] == str(corpus_path.resolve())
    assert manifest["corpus"]["size"] == corpus_path.stat().st_size

    loaded = BM25Retriever(corpus_path, index_dir=index_dir)
    assert loaded.loaded_from_index
    assert loaded.passages == built.passages
    assert search(loaded, queries) == search(built, queries)

    assert not BM25Retriever(corpus_path, index_dir=index_dir, stemmer=None).loaded_from_index  # settings changed


def test_bm25_index_dir_rebuilds_when_corpus_changes(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", TOPICS[:10])
    index_dir = tmp_path / "index"
    BM25Retriever(corpus, index_dir=index_dir)
    write_corpus(corpus, TOPICS[:12])
    changed = BM25Retriever(corpus, index_dir=index_dir)
    assert not changed.loaded_from_index and len(changed.passages) == 12
    assert BM25Retriever(corpus, index_dir=index_dir).loaded_from_index


def test_bm25_index_dir_ignores_corrupt_index(corpus_path: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    BM25Retriever(corpus_path, index_dir=index_dir)
    (index_dir / "passages.jsonl").write_text('{"id": "only one", "title": "", "text": ""}\n')
    retriever = BM25Retriever(corpus_path, index_dir=index_dir)
    assert not retriever.loaded_from_index and len(retriever.passages) == len(TOPICS)
    assert BM25Retriever(corpus_path, index_dir=index_dir).loaded_from_index  # rewritten


# ---------------------------------------------------------------- HTTP client against local servers

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LocalServer(LocalApp):
    """POST ``routes`` on a local server (see :class:`LocalApp`), recording request times per path and headers."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.hits: dict[str, list[float]] = defaultdict(list)
        self.headers: list[dict[str, str]] = []

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.hits[request.path].append(time.monotonic())
            self.headers.append(dict(request.headers))
            return await handler(request)

        app = web.Application(middlewares=[record])
        for path, handler in routes.items():
            app.router.add_post(path, handler)
        super().__init__(app)


def retrieve_handler(backend: Retriever) -> Handler:
    """Search-R1's ``POST /retrieve``, backed by ``backend``."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        results = await backend.search(body["queries"], body["topk"])
        return web.json_response(
            {
                "result": [
                    [{"document": {"id": p.id, "contents": p.contents}, "score": p.score} for p in r.passages]
                    for r in results
                ]
            }
        )

    return handle


def fails_then_succeeds(backend: Retriever, failures: int, status: int, headers: dict[str, str]) -> Handler:
    ok = retrieve_handler(backend)
    count = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count <= failures:
            return web.Response(status=status, text="try later", headers=headers)
        return await ok(request)

    return handle


def status_handler(status: int) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=status, text="nope")

    return handle


def body_handler(body: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")

    return handle


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.json_response({"result": [[]]})


async def one_second(request: web.Request) -> web.Response:
    body = await request.json()
    await asyncio.sleep(1.0)
    return web.json_response({"result": [[{"id": q, "contents": '"T"\nx'}] for q in body["queries"]]})


async def flashrag_style(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"result": [[{"id": "f1", "contents": '"Flash"\nRAG style'}] for _ in body["queries"]]})


@pytest.fixture
def server(bm25: BM25Retriever) -> Iterator[LocalServer]:
    srv = LocalServer(
        {
            "/retrieve": retrieve_handler(bm25),
            "/flaky": fails_then_succeeds(bm25, 2, 500, {}),
            "/always500": status_handler(500),
            "/bad400": status_handler(400),
            "/rate_limited": fails_then_succeeds(bm25, 1, 429, {"Retry-After": "0.3"}),
            "/rate_limited_long": fails_then_succeeds(bm25, 1, 429, {"Retry-After": "120"}),
            "/slow": slow,
            "/one_second": one_second,
            "/not_json": body_handler("<html>oops"),
            "/wrong_count": body_handler('{"result": [[]]}'),
            "/wrong_shape": body_handler('{"result": [{"id": 1}, {"id": 2}]}'),
            "/bad_score": body_handler('{"result": [[{"document": {"id": 1, "contents": "x"}, "score": "high"}]]}'),
            "/flashrag": flashrag_style,
        }
    )
    yield srv
    srv.stop()


def client(url: str, **kwargs: Any) -> HTTPRetriever:
    return HTTPRetriever(url, **{"timeout": 2.0, "max_retries": 3, "backoff": 0.01, "max_backoff": 0.05, **kwargs})


def test_http_round_trips_passages_and_scores(server: LocalServer, bm25: BM25Retriever) -> None:
    queries = ["magma chamber lava", "", "felt hammers strings", "wild yeast"]
    remote = search_and_close(client(server.url("/retrieve")), queries)
    assert remote == search(bm25, queries)
    assert ids(remote[0])[0] == "doc0" and remote[1].passages == []
    assert remote[0].passages[0].title == "Volcano" and isinstance(remote[0].passages[0].score, float)
    assert len(server.hits["/retrieve"]) == 1  # one request per batch


def test_http_accepts_flashrag_entries_without_scores(server: LocalServer) -> None:
    (r1, r2) = search_and_close(client(server.url("/flashrag")), ["a", "b"])
    assert r1 == r2 == SearchResult([Passage("f1", "Flash", "RAG style", None)])


def test_http_retries_5xx_then_succeeds(server: LocalServer) -> None:
    (r,) = search_and_close(client(server.url("/flaky")), ["magma"])
    assert r.error is None and ids(r)[0] == "doc0"
    assert len(server.hits["/flaky"]) == 3


def test_http_gives_up_after_max_retries(server: LocalServer) -> None:
    results = search_and_close(client(server.url("/always500"), max_retries=2), ["a", "b"])
    assert len(server.hits["/always500"]) == 3
    assert [r.passages for r in results] == [[], []]
    assert results[0].error == results[1].error == "HTTP 500 Internal Server Error (after 3 attempts)"


def test_http_no_retry_on_4xx(server: LocalServer) -> None:
    (r,) = search_and_close(client(server.url("/bad400")), ["a"])
    assert r.passages == [] and r.error is not None and r.error.startswith("HTTP 400")
    assert len(server.hits["/bad400"]) == 1


def test_http_honours_retry_after(server: LocalServer) -> None:
    (r,) = search_and_close(client(server.url("/rate_limited"), max_backoff=5.0), ["magma"])
    assert r.error is None and ids(r)[0] == "doc0"
    first, second = server.hits["/rate_limited"]
    assert 0.28 <= second - first < 2.0  # waited the 0.3 s asked for, not the 0.01 s backoff


def test_http_caps_retry_after_at_max_backoff(server: LocalServer) -> None:
    start = time.monotonic()
    (r,) = search_and_close(client(server.url("/rate_limited_long"), max_backoff=0.2), ["magma"])
    assert r.error is None and time.monotonic() - start < 2.0
    first, second = server.hits["/rate_limited_long"]
    assert second - first >= 0.19


def test_http_timeout_gives_error_in_bounded_time(server: LocalServer) -> None:
    start = time.monotonic()
    (r,) = search_and_close(client(server.url("/slow"), timeout=0.3, max_retries=1), ["a"])
    elapsed = time.monotonic() - start
    assert r.passages == [] and r.error == "timed out after 0.3s (after 2 attempts)"
    assert 0.6 <= elapsed < 2.5
    assert len(server.hits["/slow"]) == 2


def test_waiting_for_one_of_the_sessions_connections_is_not_a_timeout(server: LocalServer) -> None:
    """200 searches at once through one session (aiohttp keeps 100 connections): the last 100 wait ~1 s for a
    connection, then the server takes 1 s, past the 1.5 s timeout in all; the timeout bounds the server only (its
    1 s, with room for a busy process's pauses)."""
    retriever = client(server.url("/one_second"), timeout=1.5, max_retries=0)

    async def go() -> list[SearchResult]:
        try:
            return [r for rs in await asyncio.gather(*(retriever.search([f"q{i}"], 1) for i in range(200))) for r in rs]
        finally:
            await retriever.close()

    start = time.monotonic()
    results = asyncio.run(go())
    assert [r.error for r in results] == [None] * 200 and [r.passages[0].id for r in results[-2:]] == ["q198", "q199"]
    assert time.monotonic() - start >= 2.0  # two rounds of the pool


def test_http_connection_refused_gives_error() -> None:
    with socket.socket() as reserved:  # bound but not listening: connections to it are refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        start = time.monotonic()
        (r,) = search_and_close(client(f"http://127.0.0.1:{port}/retrieve", max_retries=2), ["a"])
    assert r.passages == [] and r.error is not None
    assert "ClientConnectorError" in r.error and r.error.endswith("(after 3 attempts)")
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("path", ["/not_json", "/wrong_count", "/wrong_shape", "/bad_score"])
def test_http_malformed_response_gives_error_without_retry(server: LocalServer, path: str) -> None:
    results = search_and_close(client(server.url(path)), ["a", "b"])
    assert all(r.passages == [] and r.error is not None and r.error.startswith("malformed response") for r in results)
    assert len(server.hits[path]) == 1


def test_http_sends_bearer_token_without_logging_it(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RESEARCH_PLUGIN_TOKEN", "s3cret-token")
    retriever = client(server.url("/always500"), max_retries=1)
    with caplog.at_level(logging.DEBUG):
        search_and_close(retriever, ["a"])
    assert server.headers[-1]["Authorization"] == "Bearer s3cret-token"
    assert "s3cret" not in caplog.text and "s3cret" not in retriever.describe() and "s3cret" not in repr(retriever)


def test_http_argument_errors() -> None:
    with pytest.raises(ValueError):
        HTTPRetriever("127.0.0.1:8000/retrieve")
    with pytest.raises(ValueError):
        HTTPRetriever("http://127.0.0.1:1/retrieve", timeout=0)
    with pytest.raises(ValueError):
        asyncio.run(HTTPRetriever("http://127.0.0.1:1/retrieve").search(["a"], 0))


def test_http_client_reused_across_event_loops(server: LocalServer) -> None:
    retriever = client(server.url("/retrieve"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = search(retriever, ["magma"])  # no close(): the session must not leak into the next loop
        second = search(retriever, ["magma"])
        gc.collect()
    assert first == second and ids(first[0])[0] == "doc0"
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_http_client_concurrent_loops_in_threads(server: LocalServer) -> None:
    retriever = client(server.url("/retrieve"))
    results: list[list[SearchResult]] = []
    threads = [threading.Thread(target=lambda: results.append(search(retriever, ["wild yeast"] * 3))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 4 and all(ids(r[0])[0] == "doc7" for r in results)


# ---------------------------------------------------------------- specs, registry, cache


def test_build_retriever_from_specs(corpus_path: Path) -> None:
    bm25 = build_retriever({"type": "bm25", "corpus": str(corpus_path)})
    assert isinstance(bm25, BM25Retriever) and "passages=26" in bm25.describe()
    http = build_retriever("http://127.0.0.1:8000/retrieve")
    assert isinstance(http, HTTPRetriever) and http.url == "http://127.0.0.1:8000/retrieve"
    spec = {"type": "http", "url": "https://user:pw@example.test/retrieve", "timeout": 3, "max_retries": 0}
    http = build_retriever(spec)
    assert isinstance(http, HTTPRetriever) and (http.timeout, http.max_retries) == (3.0, 0)
    assert "pw" not in http.describe()


def test_build_retriever_rejects_unknown_specs() -> None:
    with pytest.raises(ValueError, match="known types: bm25, dense, http"):
        build_retriever({"type": "faiss"})
    with pytest.raises(ValueError, match="known types"):
        build_retriever({"corpus": "two_hop"})
    with pytest.raises(ValueError, match="must be 'two_hop' or an http"):
        build_retriever("demo")  # the bundled corpus's former name


def test_registry_two_hop_shorthand_and_new_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, object]] = []

    class Fake(Retriever):
        def __init__(self, **options: object) -> None:
            made.append(options)

        async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
            return [SearchResult([Passage("x", "", q)]) for q in queries]

    monkeypatch.setattr(retrieval, "_cache", {})
    monkeypatch.setitem(retrieval.RETRIEVER_TYPES, "bm25", Fake)
    monkeypatch.setitem(retrieval.RETRIEVER_TYPES, "fake", Fake)
    assert get_retriever("two_hop") is get_retriever({"type": "bm25", "corpus": "two_hop"})
    assert made == [{"corpus": "two_hop"}]
    fake = get_retriever({"type": "fake", "opts": {"b": [1, 2], "a": None}})
    assert fake is get_retriever({"opts": {"a": None, "b": (1, 2)}, "type": "fake"})
    assert made[-1] == {"opts": {"b": [1, 2], "a": None}}
    assert search(fake, ["q1", "q2"]) == [SearchResult([Passage("x", "", q)]) for q in ("q1", "q2")]


def test_get_retriever_caches_per_spec(corpus_path: Path, tmp_path: Path) -> None:
    spec = {"type": "bm25", "corpus": str(corpus_path), "index_dir": str(tmp_path / "idx")}
    assert built_retriever(spec) is None  # looked up without building
    first = get_retriever(spec)
    assert built_retriever(dict(spec)) is first
    assert get_retriever(dict(reversed(list(spec.items())))) is first
    assert get_retriever({**spec, "stemmer": None}) is not first
    url = f"http://127.0.0.1:1/retrieve?{os.getpid()}"
    assert get_retriever(url) is get_retriever({"type": "http", "url": url}) is not get_retriever(url + "x")


def test_get_retriever_is_thread_safe(corpus_path: Path, tmp_path: Path) -> None:
    spec = {"type": "bm25", "corpus": str(corpus_path), "stopwords": ["the"], "index_dir": str(tmp_path / "i")}
    got: list[Retriever] = []
    threads = [threading.Thread(target=lambda: got.append(get_retriever(spec))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 8 and all(r is got[0] for r in got)


def test_the_set_latency_retriever_takes_its_time_and_serves_every_event_loop() -> None:
    """``{"type": "latency"}``: answers after its stages' time, the same passages for the same query; one
    process-wide instance searched from two event loops in turn (``asyncio.run`` twice) answers both."""
    import time

    spec = {"type": "latency", "stages": [[30, 1]], "words": 10}
    retriever = get_retriever(check_spec(spec))
    start = time.perf_counter()
    first = asyncio.run(retriever.search(["a", "b"], 3))
    assert time.perf_counter() - start >= 0.031
    again = asyncio.run(get_retriever(spec).search(["a"], 3))
    assert [p.id for p in again[0].passages] == [p.id for p in first[0].passages] and len(first[1].passages) == 3
    assert len(first[0].passages[0].text.split()) == 10 and again[0].error is None
    with pytest.raises(Exception, match="stages"):
        build_retriever({"type": "latency", "stages": [[-1, 0]]})
