"""The retrieval server against real uvicorn servers on 127.0.0.1: the Search-R1 and FlashRAG APIs, batching,
caching, backpressure, validation, auth, loading, backend failures, and the ``serve`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from research_plugin.retrieval import BM25Retriever, HTTPRetriever, Retriever, SearchResult
from research_plugin.retrieval.server import create_app

from .corpora import TOPICS
from .local_http import free_port, get, ok, post, post_concurrently, request, search_and_close, serve, wait_until

REPO = Path(__file__).resolve().parents[1]

# one query per topic, each matching its own passage best
QUERIES = [" ".join(text.split()[3:7]) for _, text in TOPICS]


class Wrapped(Retriever):
    """Delegates to ``inner``, recording each backend call; can sleep first, or raise on chosen call numbers."""

    def __init__(self, inner: Retriever, *, delay: float = 0.0, fail_calls: tuple[int, ...] = ()) -> None:
        self.inner = inner
        self.delay = delay
        self.fail_calls = fail_calls
        self.calls: list[list[str]] = []

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        self.calls.append(queries)
        if len(self.calls) in self.fail_calls:
            raise RuntimeError("backend exploded")
        if self.delay:
            await asyncio.sleep(self.delay)
        return await self.inner.search(queries, top_k)


# ---------------------------------------------------------------- helpers


def docs(result: SearchResult) -> list[dict[str, str]]:
    return [{"id": p.id, "contents": p.contents} for p in result.passages]


def direct(bm25: BM25Retriever, queries: list[str], top_k: int) -> list[SearchResult]:
    return asyncio.run(bm25.search(queries, top_k))


# ---------------------------------------------------------------- the three APIs


@pytest.fixture(scope="module")
def url(bm25: BM25Retriever) -> Iterator[str]:
    with serve(create_app(bm25, index_id="test")) as base:
        yield base


def test_health_reports_index_and_passages(url: str) -> None:
    status, _, body = get(url + "/health")
    assert (status, body) == (200, {"status": "ok", "index": "test", "passages": len(TOPICS)})


def test_retrieve_matches_bm25_with_and_without_scores(url: str, bm25: BM25Retriever) -> None:
    queries = QUERIES[:5] + ["", "zzzz unknown words"]
    expected = direct(bm25, queries, 3)
    scored = ok(url + "/retrieve", {"queries": queries, "topk": 3, "return_scores": True})["result"]
    assert [[e["document"] for e in row] for row in scored] == [docs(r) for r in expected]
    assert [[e["score"] for e in row] for row in scored] == [[p.score for p in r.passages] for r in expected]
    plain = ok(url + "/retrieve", {"queries": queries, "topk": 3})["result"]
    assert plain == [docs(r) for r in expected]
    assert [row[0]["id"] for row in plain[:5]] == [f"doc{i}" for i in range(5)]
    (default,) = ok(url + "/retrieve", {"queries": ["earthquake ocean waves ground"]})["result"]
    assert len(default) == 3  # Search-R1's default topk


def test_flashrag_search_and_batch_search(url: str, bm25: BM25Retriever) -> None:
    (one,) = direct(bm25, [QUERIES[7]], 4)
    assert ok(url + "/search", {"query": QUERIES[7], "top_n": 4}) == docs(one)
    assert ok(url + "/search", {"query": QUERIES[7], "top_n": 4, "return_score": True}) == [
        docs(one),
        [p.score for p in one.passages],
    ]
    expected = direct(bm25, QUERIES[8:12], 2)
    assert ok(url + "/batch_search", {"query": QUERIES[8:12], "top_n": 2}) == [docs(r) for r in expected]
    assert ok(url + "/batch_search", {"query": QUERIES[8:12], "top_n": 2, "return_score": True}) == [
        [docs(r) for r in expected],
        [[p.score for p in r.passages] for r in expected],
    ]


def test_http_retriever_client_against_server(url: str, bm25: BM25Retriever) -> None:
    remote = search_and_close(HTTPRetriever(url + "/retrieve", timeout=5, max_retries=0), QUERIES[:6], 2)
    expected = direct(bm25, QUERIES[:6], 2)
    assert [r.error for r in remote] == [None] * 6
    assert remote == expected  # ids, titles, texts and scores


# ---------------------------------------------------------------- batching, caching, backpressure


def test_concurrent_requests_share_batches(bm25: BM25Retriever) -> None:
    backend = Wrapped(bm25)
    with serve(create_app(backend, index_id="t", batch_window_ms=20)) as base:
        payloads = [{"queries": [q], "topk": 2} for q in QUERIES] + [{"queries": QUERIES[:6], "topk": 2}] * 6
        replies = post_concurrently(base + "/retrieve", payloads)
        metrics = get(base + "/metrics")[2]
    assert [status for status, _, _ in replies] == [200] * 32
    expected_top = {q: r.passages[0].id for q, r in zip(QUERIES, direct(bm25, QUERIES, 1))}
    for payload, (_, _, body) in zip(payloads, replies):
        assert [row[0]["id"] for row in body["result"]] == [expected_top[q] for q in payload["queries"]]
    batches = metrics["batches"]
    print(f"32 concurrent requests -> {batches}")
    assert metrics["requests"]["/retrieve"] == 32
    assert batches["count"] == len(backend.calls) < 32
    assert batches["max_size"] > 1
    assert batches["queries"] == sum(len(call) for call in backend.calls) == len(QUERIES)  # duplicates searched once
    assert sum(batches["histogram"].values()) == batches["count"]
    assert metrics["latency_ms"]["window"] == 32 and metrics["latency_ms"]["p99"] >= metrics["latency_ms"]["p50"] > 0


async def _clients_of(batcher, client, n: int) -> None:
    """Run ``client(batcher, i)`` for ``n`` clients at once against a started ``batcher``, then stop it."""
    batcher.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(client(batcher, i) for i in range(n))), 30)
    finally:
        await batcher.stop()


def test_batch_window_waits_only_for_the_load_just_seen(bm25: BM25Retriever) -> None:
    """Flush on size or on time: with recent batches of 8, queries trickling in are held (up to the window) until 8
    wait; an idle batcher (no batch in the last second) searches a lone query at once, whatever the window."""
    from research_plugin.retrieval.batching import Batcher

    backend = Wrapped(bm25)

    async def go() -> None:
        batcher = Batcher(backend, index_id="t", batch_window_s=30.0, cache_size=0)
        batcher.start()
        try:
            await asyncio.wait_for(batcher.search([QUERIES[0]], 1), 5)  # idle: no wait
            await asyncio.gather(*(batcher.search([q], 1) for q in QUERIES[1:9]))  # a batch of 8

            async def trickle(i: int, q: str) -> None:
                await asyncio.sleep(0.01 * i)
                await batcher.search([q], 1)

            await asyncio.wait_for(asyncio.gather(*(trickle(i, q) for i, q in enumerate(QUERIES[9:17]))), 5)
            await asyncio.sleep(1.1)  # the load is forgotten after a second
            await asyncio.wait_for(batcher.search([QUERIES[17]], 1), 5)
        finally:
            await batcher.stop()

    asyncio.run(go())
    assert [len(call) for call in backend.calls] == [1, 8, 8, 1]


def test_clients_that_ask_again_are_not_split_into_cohorts(bm25: BM25Retriever) -> None:
    """24 clients each asking again as soon as they get an answer, over a backend that takes 0.1 s a batch: once
    the batcher has seen them all, every batch holds all 24 (batching only what arrived during a search splits them
    into alternating half-sized cohorts)."""
    from research_plugin.retrieval.batching import Batcher

    backend = Wrapped(bm25, delay=0.1)
    words = [w for q in QUERIES for w in q.split()]

    async def client(batcher, i: int) -> None:
        await asyncio.sleep(0.05 * (i % 2))  # half of them arrive while the first batch is searched
        for r in range(6):
            await batcher.search([f"{words[(i * 7 + r) % len(words)]} {i} {r}"], 1)

    asyncio.run(_clients_of(Batcher(backend, index_id="t", cache_size=0), client, 24))
    sizes = [len(call) for call in backend.calls]
    # the half that came first is searched alone; from then on every batch holds all 24 clients
    assert sizes[0] == 12 and set(sizes[1:-1]) == {24} and sum(sizes) == 24 * 6, sizes


def test_a_backend_that_searches_two_batches_at_once_gets_half_the_clients_in_each(bm25: BM25Retriever) -> None:
    """With room for two batches at once (a pool of search processes, or an encoder on a GPU beside an index on
    the CPU), 16 clients asking again as soon as they are answered settle into two batches of about 8, one in each
    slot, rather than fragments that each pay the backend's fixed cost."""
    from research_plugin.retrieval.batching import Batcher

    backend = Wrapped(bm25, delay=0.2)
    backend.parallel_batches = 2  # the batcher's max_in_flight follows it
    words = [w for q in QUERIES for w in q.split()]

    async def client(batcher, i: int) -> None:
        await asyncio.sleep(0.1 * (i // 8))  # half of them arrive while the first batch is searched
        for r in range(10):
            await asyncio.sleep(0.002 * (i % 8))  # an HTTP round trip: the clients of a batch come back spread
            await batcher.search([f"{words[(i * 7 + r) % len(words)]} {i} {r}"], 1)

    batcher = Batcher(backend, index_id="t", cache_size=0)
    assert batcher.max_in_flight == 2
    asyncio.run(_clients_of(batcher, client, 16))
    sizes = [len(call) for call in backend.calls]
    # once the batcher has seen them all, every batch holds about half (a late client may change sides; the last
    # batch is those still asking); without the wait: [..., 13, 2, 1, 2, 13, 2, 1, 2, 13, ...]
    assert sum(sizes) == 16 * 10 and min(sizes[-10:-1]) >= 6, str(sizes)


def test_the_wait_is_capped_and_measured_on_answered_batches_only(bm25: BM25Retriever) -> None:
    """Over a backend that takes 1 s a batch, a quarter of its service time would hold each batch for 90 ms after
    two batches (and more later); the wait stops at ``max_window_s`` (50 ms). A batch that fails, here at once,
    leaves the measured service time as it was."""
    from research_plugin.retrieval.batching import BackendError, Batcher

    backend = Wrapped(bm25, delay=1.0, fail_calls=(3,))

    async def go() -> tuple[Batcher, float, float]:
        batcher = Batcher(backend, index_id="t", cache_size=0)
        batcher.start()
        try:
            for q in QUERIES[:2]:
                await batcher.search([q], 1)
            measured = batcher._service_s
            with pytest.raises(BackendError):
                await batcher.search([QUERIES[2]], 1)
            return batcher, measured, batcher._service_s
        finally:
            await batcher.stop()

    batcher, measured, after_failure = asyncio.run(go())
    assert 0.25 * measured > batcher.max_window_s == 0.05
    assert batcher.window_s() == batcher.max_window_s
    assert after_failure == measured


def test_cache_hits_skip_the_backend(bm25: BM25Retriever) -> None:
    backend = Wrapped(bm25)
    with serve(create_app(backend, index_id="t")) as base:
        first = ok(base + "/retrieve", {"queries": ["Magma chamber"], "topk": 2})
        assert len(backend.calls) == 1
        again = ok(base + "/retrieve", {"queries": ["  magma   CHAMBER "], "topk": 2})  # same once normalised
        assert again == first and len(backend.calls) == 1
        assert ok(base + "/search", {"query": "magma chamber", "top_n": 2}) == first["result"][0]
        assert len(backend.calls) == 1
        ok(base + "/retrieve", {"queries": ["magma chamber"], "topk": 3})  # another top_k is another key
        assert len(backend.calls) == 2
        # a GRPO group: the same query from 8 rollouts at once costs one search
        replies = post_concurrently(base + "/retrieve", [{"queries": ["wax combs nectar"], "topk": 2}] * 8)
        assert {json.dumps(body) for _, _, body in replies} == {json.dumps(replies[0][2])}
        cache = get(base + "/metrics")[2]["cache"]
    assert backend.calls[2:] == [["wax combs nectar"]]
    assert cache["hits"] + cache["joined_in_flight"] == 2 + 7
    assert cache["hits"] >= 2 and cache["misses"] == 3 and cache["size"] == 3


def test_overload_answers_429_with_retry_after(bm25: BM25Retriever) -> None:
    backend = Wrapped(bm25, delay=0.3)
    app = create_app(backend, index_id="t", max_batch=1, batch_window_ms=0, max_queue=2, max_queries=2)
    with serve(app) as base:
        replies = post_concurrently(base + "/retrieve", [{"queries": [q], "topk": 1} for q in QUERIES[:10]])
        statuses = [status for status, _, _ in replies]
        metrics = get(base + "/metrics")[2]
        assert ok(base + "/retrieve", {"queries": [QUERIES[20]], "topk": 1})["result"][0][0]["id"] == "doc20"
    assert statuses.count(429) >= 5 and statuses.count(200) >= 2 and set(statuses) == {200, 429}
    for status, headers, body in replies:
        if status == 429:
            assert headers["retry-after"] == "1" and "overloaded" in body["detail"]
    assert metrics["rejected_429"] == statuses.count(429) and metrics["errors"] == 0


def test_http_retriever_retries_after_429(bm25: BM25Retriever) -> None:
    backend = Wrapped(bm25, delay=0.2)
    app = create_app(backend, index_id="t", max_batch=1, batch_window_ms=0, max_queue=1, max_queries=1)

    async def go(base: str) -> list[list[SearchResult]]:
        client = HTTPRetriever(base + "/retrieve", timeout=5, max_retries=6, max_backoff=0.3)
        try:
            return await asyncio.gather(*(client.search([q], 1) for q in QUERIES[:4]))
        finally:
            await client.close()

    with serve(app) as base:
        results = asyncio.run(go(base))
    assert [r.passages[0].id for (r,) in results] == ["doc0", "doc1", "doc2", "doc3"]


# ---------------------------------------------------------------- bad input, auth, loading, failures

BAD_REQUESTS = [
    ("/retrieve", b'{"queries": ["a"', 400),
    ("/retrieve", b"", 400),
    ("/retrieve", b"[1, 2]", 422),
    ("/retrieve", b'{"topk": 3}', 422),
    ("/retrieve", b'{"queries": "just a string"}', 422),
    ("/retrieve", b'{"queries": ["a", 7]}', 422),
    ("/retrieve", b'{"queries": [null]}', 422),
    ("/retrieve", b'{"queries": []}', 422),
    ("/retrieve", b'{"queries": ["a"], "topk": 0}', 422),
    ("/retrieve", b'{"queries": ["a"], "topk": 101}', 422),
    ("/retrieve", b'{"queries": ["a"], "topk": "3"}', 422),
    ("/retrieve", b'{"queries": ["a"], "topk": 2.5}', 422),
    ("/retrieve", b'{"queries": ["a"], "topk": true}', 422),
    ("/retrieve", b'{"queries": ["a"], "return_scores": "yes"}', 422),
    ("/retrieve", json.dumps({"queries": ["q"] * 513}).encode(), 422),
    ("/search", b'{"top_n": 3}', 422),
    ("/search", b'{"query": ["a list"]}', 422),
    ("/search", b'{"query": "a", "top_n": -1}', 422),
    ("/batch_search", b'{"query": "not a list"}', 422),
    ("/batch_search", b'{"query": [], "top_n": 3}', 422),
    ("/batch_search", b'{"query": ["a"], "top_n": 1000}', 422),
]


def test_bad_requests_get_4xx_and_the_server_lives_on(url: str) -> None:
    for path, body, expected in BAD_REQUESTS:
        status, _, reply = request(url + path, body)
        assert (path, body[:60], status) == (path, body[:60], expected), reply
        assert isinstance(reply["detail"], str) and reply["detail"]
    assert get(url + "/nowhere")[0] == 404
    assert ok(url + "/retrieve", {"queries": [QUERIES[3]], "topk": 1})["result"][0][0]["id"] == "doc3"
    metrics = get(url + "/metrics")[2]
    assert metrics["client_errors"] >= len(BAD_REQUESTS) + 1 and metrics["errors"] == 0


def test_oversized_body_gets_413(bm25: BM25Retriever) -> None:
    # small limit: the whole body fits in the socket buffers, so the client reads the 413 whatever the HTTP
    # implementation (uvicorn's httptools answers before reading the body and closes the connection)
    with serve(create_app(bm25, index_id="t", max_body_bytes=4096)) as base:
        status, _, reply = request(base + "/retrieve", json.dumps({"queries": ["x" * 8192]}).encode())
        assert status == 413 and "over 4096 bytes" in reply["detail"]
        assert ok(base + "/retrieve", {"queries": [QUERIES[3]], "topk": 1})["result"][0][0]["id"] == "doc3"


def test_bearer_token_required_except_for_health(
    bm25: BM25Retriever, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "s3cret-token-value"
    with serve(create_app(bm25, index_id="t", token=token)) as base:
        payload = {"queries": [QUERIES[0]], "topk": 1}
        assert post(base + "/retrieve", payload)[0] == 401
        status, headers, body = post(base + "/retrieve", payload, {"Authorization": "Bearer wrong"})
        assert status == 401 and headers["www-authenticate"] == "Bearer" and "token" in body["detail"]
        assert post(base + "/search", {"query": "a"})[0] == 401
        assert post(base + "/batch_search", {"query": ["a"]})[0] == 401
        assert get(base + "/metrics")[0] == 401
        assert get(base + "/health")[0] == 200
        auth = {"Authorization": f"Bearer {token}"}
        assert post(base + "/retrieve", payload, auth)[0] == 200
        assert get(base + "/metrics", auth)[2]["responses"]["401"] == 5

        monkeypatch.setenv("RESEARCH_PLUGIN_TOKEN", token)
        client = HTTPRetriever(base + "/retrieve", timeout=5, max_retries=0)
        assert [r.passages[0].id for r in search_and_close(client, QUERIES[:2], 1)] == ["doc0", "doc1"]
    assert token not in caplog.text


def test_health_is_503_while_loading_then_200(bm25: BM25Retriever) -> None:
    release = threading.Event()

    def slow_factory() -> Retriever:
        assert release.wait(10)
        return bm25

    with serve(create_app(slow_factory, index_id="slow"), wait_ready=False) as base:
        status, _, body = get(base + "/health")
        assert (status, body["status"]) == (503, "loading")
        status, headers, body = post(base + "/retrieve", {"queries": ["a"]})
        assert status == 503 and "loading" in body["detail"] and "retry-after" in headers
        assert post(base + "/retrieve", {"queries": []})[0] == 422  # validated even while loading
        release.set()
        wait_until(lambda: get(base + "/health")[0] == 200, timeout=10)
        assert get(base + "/health")[2] == {"status": "ok", "index": "slow", "passages": len(TOPICS)}
        assert ok(base + "/retrieve", {"queries": [QUERIES[4]], "topk": 1})["result"][0][0]["id"] == "doc4"


def test_index_that_fails_to_load_reports_why() -> None:
    def broken() -> Retriever:
        raise FileNotFoundError("no such corpus: wiki.jsonl")

    with serve(create_app(broken, index_id="broken"), wait_ready=False) as base:
        wait_until(lambda: get(base + "/health")[2]["status"] != "loading", timeout=10)
        status, _, body = get(base + "/health")
        assert (status, body["status"]) == (503, "failed") and "wiki.jsonl" in body["error"]
        assert post(base + "/search", {"query": "a"})[0] == 503


def test_backend_exception_fails_only_its_batch(bm25: BM25Retriever) -> None:
    backend = Wrapped(bm25, fail_calls=(1,))
    with serve(create_app(backend, index_id="t")) as base:
        status, _, body = post(base + "/retrieve", {"queries": QUERIES[:3], "topk": 1})  # one batch of 3
        assert status == 503 and "RuntimeError" in body["detail"]
        # nothing was cached or left in flight: the same queries now succeed
        replies = post_concurrently(base + "/retrieve", [{"queries": [q], "topk": 1} for q in QUERIES[:3]])
        assert [body["result"][0][0]["id"] for _, _, body in replies] == ["doc0", "doc1", "doc2"]
        metrics = get(base + "/metrics")[2]
    assert backend.calls[0] == QUERIES[:3]
    assert metrics["batches"]["backend_failures"] == 1 and metrics["errors"] == 1


def test_backend_error_results_become_503(bm25: BM25Retriever) -> None:
    class Down(Retriever):
        async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
            return [SearchResult([], error="HTTP 502 Bad Gateway (after 1 attempt)") for _ in queries]

    with serve(create_app(Down(), index_id="down")) as base:
        status, _, body = post(base + "/search", {"query": "a"})
        assert status == 503 and "502" in body["detail"]
        assert get(base + "/metrics")[2]["cache"] == {  # failures are not cached
            "hits": 0,
            "misses": 1,
            "joined_in_flight": 0,
            "size": 0,
            "capacity": 100_000,
        }


def test_app_rejects_inconsistent_limits(bm25: BM25Retriever) -> None:
    with pytest.raises(ValueError, match="max_queue"):
        create_app(bm25, index_id="t", max_queue=8, max_queries=16)


# ---------------------------------------------------------------- search processes


def search_workers() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == "search-worker"]


def test_search_processes_answer_like_the_in_process_index(corpus_path: Path, bm25: BM25Retriever) -> None:
    app = create_app(partial(BM25Retriever, corpus_path), index_id="t", cache_size=0, search_processes=2)
    with serve(app) as base:
        assert get(base + "/health")[2] == {"status": "ok", "index": "t", "passages": len(TOPICS)}
        assert len(search_workers()) == 2
        payloads = [{"queries": [q], "topk": 2, "return_scores": True} for q in QUERIES]
        replies = post_concurrently(base + "/retrieve", payloads)
        flashrag = ok(base + "/batch_search", {"query": QUERIES[:4], "top_n": 3})
        metrics = get(base + "/metrics")[2]
    expected = direct(bm25, QUERIES, 2)
    assert [status for status, _, _ in replies] == [200] * len(QUERIES)
    for (_, _, body), result in zip(replies, expected):
        (row,) = body["result"]
        assert [e["document"] for e in row] == docs(result) and [e["score"] for e in row] == [
            p.score for p in result.passages
        ]
    assert flashrag == [docs(r) for r in direct(bm25, QUERIES[:4], 3)]
    assert metrics["search_processes"] == {"processes": 2, "ready": 2, "restarts": 0}
    assert metrics["batches"]["queries"] == len(QUERIES) + 4 and metrics["batches"]["backend_failures"] == 0
    wait_until(lambda: not search_workers(), timeout=10)  # stopped with the server


def test_a_killed_search_process_is_replaced(corpus_path: Path) -> None:
    app = create_app(partial(BM25Retriever, corpus_path), index_id="t", cache_size=0, search_processes=1)
    with serve(app) as base:
        assert ok(base + "/search", {"query": QUERIES[1], "top_n": 1})[0]["id"] == "doc1"
        (worker,) = search_workers()
        os.kill(worker.pid, signal.SIGKILL)
        restarted = {"processes": 1, "ready": 1, "restarts": 1}
        wait_until(lambda: get(base + "/metrics")[2]["search_processes"] == restarted, timeout=60, step=0.1)
        assert [w.pid for w in search_workers()] != [worker.pid]
        assert ok(base + "/search", {"query": QUERIES[2], "top_n": 1})[0]["id"] == "doc2"


def test_search_processes_that_cannot_load_report_why(tmp_path: Path, bm25: BM25Retriever) -> None:
    missing = tmp_path / "missing.jsonl"
    with serve(create_app(partial(BM25Retriever, missing), index_id="x", search_processes=1), wait_ready=False) as base:
        wait_until(lambda: get(base + "/health")[2]["status"] != "loading", timeout=60, step=0.1)
        status, _, body = get(base + "/health")
        assert (status, body["status"]) == (503, "failed") and "missing.jsonl" in body["error"]
    with pytest.raises(ValueError, match="picklable"):
        create_app(bm25, index_id="t", search_processes=2)


# ---------------------------------------------------------------- saved indexes and the command line


def test_bm25_load_from_index_dir_alone(tmp_path: Path, corpus_path: Path, bm25: BM25Retriever) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(corpus_path.read_bytes())
    BM25Retriever(corpus, index_dir=tmp_path / "index")
    corpus.unlink()
    loaded = BM25Retriever(index_dir=tmp_path / "index")
    assert loaded.loaded_from_index and loaded.passages == bm25.passages
    assert direct(loaded, QUERIES, 3) == direct(bm25, QUERIES, 3)
    with pytest.raises(FileNotFoundError):
        BM25Retriever(index_dir=tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="format"):
        BM25Retriever(index_dir=tmp_path)


def test_cli_serve_two_hop_subprocess() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RESEARCH_PLUGIN_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "research_plugin.cli", "serve", "--index", "two_hop", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.communicate()[0].decode()
            try:
                return get(base + "/health")[0] == 200
            except OSError:
                return False

        wait_until(healthy, timeout=60, step=0.2)
        assert get(base + "/health")[2]["index"] == "two_hop"
        (row,) = ok(base + "/retrieve", {"queries": ["capital of Varenholt"], "topk": 2})["result"]
        assert len(row) == 2 and row[0]["contents"].startswith('"Varenholt')
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_cli_serve_wires_index_folder_limits_and_token(
    tmp_path: Path, corpus_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from research_plugin.cli import main

    launched: list[tuple[Any, str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: launched.append((app, host, port)))
    monkeypatch.setenv("MY_TOKEN", "tok")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("OMP_WAIT_POLICY")  # restored to what it was after the test
    BM25Retriever(corpus_path, index_dir=tmp_path / "index")
    argv = ["serve", "--index", str(tmp_path / "index"), "--port", "9", "--max-topk", "5", "--token-env", "MY_TOKEN"]
    argv += ["--search-processes", "1"]
    assert main(argv) == 0
    ((app, host, port),) = launched
    assert (host, port) == ("127.0.0.1", 9)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # idle OpenMP threads sleep (search processes inherit it)
    with serve(app, wait_ready=False) as base:
        wait_until(lambda: get(base + "/health")[0] == 200, timeout=10)
        assert get(base + "/health")[2]["index"] == str((tmp_path / "index").resolve())
        auth = {"Authorization": "Bearer tok"}
        assert post(base + "/search", {"query": QUERIES[5], "top_n": 5})[0] == 401
        assert post(base + "/search", {"query": QUERIES[5], "top_n": 6}, auth)[0] == 422
        assert post(base + "/search", {"query": QUERIES[5], "top_n": 5}, auth)[2][0]["id"] == "doc5"
        assert get(base + "/metrics", auth)[2]["search_processes"] == {"processes": 1, "ready": 1, "restarts": 0}

    assert main(["serve", "--index", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["serve", "--index", str(tmp_path)]) == 2  # a folder without a manifest
    assert main(["serve", "--max-queue", "4", "--max-queries", "8"]) == 2
    assert len(launched) == 1
