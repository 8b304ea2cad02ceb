"""The ``ray`` retriever (one index actor shared by all workers) and the Ray Serve deployment, on a local
loopback-only Ray cluster started once for the module."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray._private import ray_constants

from research_plugin.retrieval import BM25Retriever, HTTPRetriever, SearchResult, build_retriever
from research_plugin.retrieval.ray_backend import (
    RayActorRetriever,
    actor_name,
    get_or_create_actor,
    serve_deployment,
)

from .corpora import TOPICS, write_corpus
from .local_http import free_port, search_and_close, wait_until

TITLES = {"Volcano", "Honeybee", "Piano", "Glacier", "Chess", "Lighthouse", "Penguin", "Telescope"}
PASSAGES = [(title, text) for title, text in TOPICS if title in TITLES]
QUERIES = ["lava and magma", "honey in wax combs", "keyboard hammers", "ice flowing downhill", "ships at night"]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_corpus(tmp_path_factory.mktemp("ray") / "corpus.jsonl", PASSAGES, id_format="p{}"))


@pytest.fixture(scope="module")
def expected(corpus: str) -> list[SearchResult]:
    return run(BM25Retriever(corpus).search(QUERIES, 3))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    # Ray turns a 127.0.0.1 node address into the host's address; its single-machine mode (the macOS / Windows
    # default) keeps every Ray process on loopback. The env var reaches Ray's own processes, the constant this one.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        yield
        ray.shutdown()


def stats(client: RayActorRetriever) -> dict[str, Any]:
    return ray.get(client.actor.stats.remote())


def test_actor_name_ignores_key_order() -> None:
    a = actor_name({"type": "bm25", "corpus": "/c.jsonl", "stemmer": None})
    assert a == actor_name({"stemmer": None, "corpus": "/c.jsonl", "type": "bm25"})
    assert a != actor_name({"type": "bm25", "corpus": "/other.jsonl"})


def test_no_cluster_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    addresses = []

    def no_cluster(address: str | None = None, **_: Any) -> None:
        addresses.append(address)
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(RuntimeError, match="needs a running Ray cluster"):
        RayActorRetriever({"type": "bm25", "corpus": "two_hop"})
    assert addresses == ["auto"]  # only ever connects; never starts a private cluster


def test_actor_results_equal_in_process_and_calls_are_batched(
    cluster: None, corpus: str, expected: list[SearchResult]
) -> None:
    spec = {"type": "ray", "index": {"type": "bm25", "corpus": corpus}, "batching": {"batch_window_s": 0.05}}
    client = build_retriever(spec)
    assert run(client.search(QUERIES, 3)) == expected

    async def many_single_searches() -> list[list[SearchResult]]:
        return await asyncio.gather(*(client.search([q], 3) for q in QUERIES * 8))

    before = stats(client)
    answers = run(many_single_searches())
    assert [a for (a,) in answers] == expected * 8
    after = stats(client)
    assert after["requests"] - before["requests"] == len(QUERIES) * 8
    assert after["batch"].batches == before["batch"].batches  # all answered from the actor's cache
    assert after["batch"].cache_hits - before["batch"].cache_hits == len(QUERIES) * 8

    fresh = [f"{q} {i}" for i in range(8) for q in QUERIES]  # distinct, uncached queries

    async def uncached() -> list[list[SearchResult]]:
        return await asyncio.gather(*(client.search([q], 2) for q in fresh))

    assert all(not r.error and r.passages for (r,) in run(uncached()))
    backend_calls = stats(client)["batch"].batches - after["batch"].batches
    assert 1 <= backend_calls < len(fresh) // 4


@ray.remote(num_cpus=0)
class AgentLoopWorker:
    """Stands in for a verl agent-loop worker: its own process, asking for the retriever by spec."""

    async def search(self, spec: dict[str, Any], query: str) -> tuple[int, int, list[SearchResult]]:
        import os

        from research_plugin.retrieval import get_retriever

        retriever = get_retriever(spec)
        results = await retriever.search([query], 3)
        shared = await retriever.actor.stats.remote()
        return os.getpid(), shared["pid"], results


def test_workers_share_one_actor(cluster: None, corpus: str) -> None:
    index = {"type": "bm25", "corpus": corpus, "stopwords": None}
    spec = {"type": "ray", "index": index}
    workers = [AgentLoopWorker.remote() for _ in range(2)]
    (pid_a, actor_a, (res_a,)), (pid_b, actor_b, (res_b,)) = ray.get(
        [w.search.remote(spec, q) for w, q in zip(workers, QUERIES)]
    )
    assert pid_a != pid_b and actor_a == actor_b
    assert res_a.passages[0].id == "p0" and res_b.passages[0].id == "p1"
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == actor_name(index)]
    assert named == [{"name": actor_name(index), "namespace": "research_plugin"}]
    shared = ray.get(get_or_create_actor(index).stats.remote())
    assert shared["pid"] == actor_a and shared["requests"] == 2  # one index, searched by both workers


def test_dead_actor_gives_error_results_then_is_recreated(
    cluster: None, corpus: str, expected: list[SearchResult]
) -> None:
    client = build_retriever({"type": "ray", "index": {"type": "bm25", "corpus": corpus}, "name": "doomed"})
    assert run(client.search(QUERIES[:1], 3)) == expected[:1]
    ray.kill(client.actor)
    wait_until(
        lambda: all(a["name"] != "doomed" for a in ray.util.list_named_actors(all_namespaces=True)),
        timeout=30,
        step=0.05,
    )

    failed = run(client.search(QUERIES[:2], 3))
    assert [r.passages for r in failed] == [[], []]
    assert all(r.error and "Actor" in r.error for r in failed)
    assert run(client.search(QUERIES, 3)) == expected  # the next search made a new actor


def test_timeout_gives_error_results(cluster: None, corpus: str) -> None:
    client = RayActorRetriever({"type": "bm25", "corpus": corpus}, timeout=1e-6)
    assert run(client.search(["an uncached query"], 3)) == [SearchResult([], error="timed out after 1e-06s")]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")  # Ray Serve's own models
def test_serve_replicas_answer_http_retriever(cluster: None, corpus: str, expected: list[SearchResult]) -> None:
    from ray import serve

    url = serve_deployment({"type": "bm25", "corpus": corpus}, num_replicas=2, port=free_port(), num_cpus=0.5)
    try:
        assert serve.status().applications["retrieval"].deployments["RetrievalServer"].replica_states == {"RUNNING": 2}
        with urllib.request.urlopen(url.removesuffix("/retrieve") + "/health", timeout=10) as resp:
            assert json.load(resp)["status"] == "ok"

        assert search_and_close(HTTPRetriever(url), QUERIES, 3) == expected
    finally:
        serve.shutdown()
