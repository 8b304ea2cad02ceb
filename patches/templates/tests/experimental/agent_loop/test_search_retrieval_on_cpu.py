"""Retrievers of the search agent: specs, in-process BM25, and the HTTP client against a real server on loopback."""

import asyncio
import json

import pytest
from aiohttp import web

from verl.experimental.agent_loop.search.retrieval import (
    HTTPRetriever,
    Passage,
    build_retriever,
    get_retriever,
    iter_corpus,
)

from .search_agent_test_utils import RetrievalServer

PASSAGES = [
    ("Orvell Glassworks", "The Orvell Glassworks is a glass factory in Tamsk, founded in 1871 by Ilsa Marrow."),
    ("Ilsa Marrow", "Ilsa Marrow was an industrialist born in the harbour town of Keddle in 1840."),
    ("Keddle", "Keddle is a harbour town on the Quessa River, known for its fish market."),
    ("Varenholt", "Varenholt is a kingdom whose capital is Lune. Its currency is the varen."),
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"id": f"p{i}", "contents": f'"{t}"\n{x}'} for i, (t, x) in enumerate(PASSAGES)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n", encoding="utf-8")
    return path


def test_corpus_rows_in_both_formats_and_bad_lines_skipped(corpus):
    passages = list(iter_corpus(corpus))
    assert [p.title for p in passages] == [t for t, _ in PASSAGES]
    assert Passage.from_record({"id": 1, "title": "T", "text": "x"}) == Passage("1", "T", "x")


def test_specs():
    assert isinstance(build_retriever("http://127.0.0.1:9/retrieve"), HTTPRetriever)
    with pytest.raises(ValueError, match="bm25, http"):
        build_retriever({"type": "dense"})
    with pytest.raises(ValueError):
        build_retriever("not a url")
    spec = {"type": "http", "url": "http://127.0.0.1:9/retrieve", "timeout": 2}
    assert get_retriever(spec) is get_retriever(dict(reversed(list(spec.items()))))  # one per process and spec


def test_bm25_in_process(corpus, tmp_path):
    pytest.importorskip("bm25s")
    spec = {"type": "bm25", "corpus": str(corpus), "index_dir": str(tmp_path / "index")}
    first = build_retriever(spec)
    (hit, miss) = asyncio.run(first.search(["where was Ilsa Marrow born", "zzz qqq"], top_k=2))
    assert hit.passages[0].title == "Ilsa Marrow" and hit.error is None
    assert miss.passages == []  # no query word in the corpus: nothing, rather than arbitrary passages
    again = build_retriever(spec)
    assert again.loaded_from_index and not first.loaded_from_index
    with pytest.raises(ValueError, match="top_k"):
        asyncio.run(first.search(["x"], top_k=0))


def test_two_hop_spec_searches_the_example_corpus():
    pytest.importorskip("bm25s")
    (result,) = asyncio.run(get_retriever("two_hop").search(["capital of Varenholt"], top_k=3))
    assert result.passages and any("Varenholt" in p.title for p in result.passages)


def test_http_client_speaks_search_r1_retrieve():
    async def main():
        async with RetrievalServer(PASSAGES) as server:
            client = HTTPRetriever(server.url, timeout=5)
            results = await client.search(["Keddle harbour", "Varenholt capital"], top_k=2)
            await client.close()
        return server, results

    server, results = asyncio.run(main())
    assert server.requests == [{"queries": ["Keddle harbour", "Varenholt capital"], "topk": 2, "return_scores": True}]
    assert [p.title for p in results[0].passages] == ["Ilsa Marrow", "Keddle"]
    assert results[1].passages[0].text.startswith("Varenholt is a kingdom") and results[1].passages[0].score == 1.0


def test_http_failures_become_error_results_after_bounded_retries():
    async def flaky(request):
        return web.Response(status=503, headers={"Retry-After": "0"})

    async def malformed(request):
        return web.json_response({"result": "not a list"})

    async def main():
        out = {}
        for name, handler in {"flaky": flaky, "malformed": malformed}.items():
            async with RetrievalServer(handler=handler) as server:
                client = HTTPRetriever(server.url, timeout=5, max_retries=2, backoff=0)
                out[name] = (await client.search(["q1", "q2"], top_k=1), len(server.requests))
                await client.close()
        client = HTTPRetriever("http://127.0.0.1:9/retrieve", timeout=2, max_retries=1, backoff=0)  # nothing listens
        out["down"] = (await client.search(["q"], top_k=1), 0)
        await client.close()
        return out

    out = asyncio.run(main())
    results, requests = out["flaky"]
    assert requests == 3 and all(r.passages == [] and "HTTP 503" in r.error for r in results)
    assert "after 3 attempts" in results[0].error
    results, requests = out["malformed"]
    assert requests == 1 and "malformed response" in results[0].error  # not retried
    (down,), _ = out["down"]
    assert down.passages == [] and "after 2 attempts" in down.error
