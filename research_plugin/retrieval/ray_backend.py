"""One retrieval index shared by every process of a Ray cluster, and a Ray Serve deployment of the HTTP server.

verl runs its agent loops in many Ray worker processes; an in-process index (``bm25``, ``dense``) would be loaded
once per worker. The ``ray`` retriever spec instead names an index that lives in one named actor:

    {"type": "ray", "index": {"type": "dense", "index_dir": "/abs/path"}, "num_cpus": 4}

The first worker that asks creates the actor (``get_if_exists``); the others find it by its name, which is derived
from the inner spec, so equal specs share one index. The actor gathers concurrent calls from all workers into
batches with the server's :class:`~research_plugin.retrieval.batching.Batcher` (dedupe, cache, one backend call
per batch). Paths in the inner spec are read by the actor's process: make them absolute.

By default the actor shares the fate of the process that created it (in verl, the first agent-loop worker, which
lives as long as the run), so a finished or crashed run never leaves an index holding memory on a shared cluster;
``detached=True`` keeps it until it is killed, for reuse across runs. If the actor dies, searches return error
results and the next search creates it again. Without an initialised Ray, the client connects to a running cluster
(``ray.init(address="auto")``: ``RAY_ADDRESS`` or one started with ``ray start``) and otherwise raises
``RuntimeError``; it never starts a private cluster.

For more throughput than one process gives, :func:`serve_deployment` runs N replicas of the HTTP server (same
``/retrieve``, ``/search``, ``/batch_search``, ``/health``, ``/metrics``) behind one Ray Serve route.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ray
from ray.actor import ActorHandle

from . import RetrieverSpec, _normalise, build_retriever
from .base import Retriever, SearchResult
from .batching import BackendError, Batcher, BatchStats, Overloaded

if TYPE_CHECKING:
    from ray.serve import Application

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "research_plugin"
_ACTOR_BATCHING: dict[str, Any] = {"max_queue": 1 << 16}
"""Batcher settings of the actor beyond the server's defaults: its queue is deep because, unlike HTTP clients,
callers do not retry."""


def actor_name(spec: RetrieverSpec) -> str:
    """The actor name for an index spec: a hash of its normalised form (mapping order does not matter)."""
    canonical = json.dumps(_normalise(spec), sort_keys=True, default=str)
    return "retriever-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


@ray.remote
class RetrieverActor:
    """Holds one retriever built from ``spec`` and serves batched searches to any number of callers."""

    def __init__(self, spec: RetrieverSpec, batching: Mapping[str, Any] | None = None) -> None:
        self._retriever = build_retriever(spec)
        self._batching = {**_ACTOR_BATCHING, **(batching or {})}
        self._batcher: Batcher | None = None
        self._requests = 0
        logger.info("retriever actor (pid %d) holds %s", os.getpid(), self._retriever.describe())

    async def search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        """One result per query; failures (backend error, full queue) are error results."""
        self._requests += 1
        if self._batcher is None:  # started here: it needs the actor's event loop
            self._batcher = Batcher(self._retriever, index_id=self._retriever.describe(), **self._batching)
            self._batcher.start()
        try:
            found = await self._batcher.search(queries, top_k)
        except (BackendError, Overloaded) as e:
            error = f"{type(e).__name__}: {e}"
            return [SearchResult([], error=error) for _ in queries]
        return [SearchResult(list(passages)) for passages in found]

    def stats(self) -> dict[str, Any]:
        """``pid``, ``index``, ``requests`` (search calls) and the batcher's :class:`BatchStats` (``batches`` is
        the number of backend calls)."""
        batch = self._batcher.stats if self._batcher is not None else BatchStats()
        return {"pid": os.getpid(), "index": self._retriever.describe(), "requests": self._requests, "batch": batch}


def _connect_ray() -> None:
    """Use the initialised Ray, or connect to a running cluster; never start a private one."""
    if ray.is_initialized():
        return
    try:
        ray.init(address="auto")
    except ConnectionError as e:
        raise RuntimeError(
            "the 'ray' retriever needs a running Ray cluster: call ray.init() first (verl does), "
            "start one with `ray start --head`, or set RAY_ADDRESS"
        ) from e


def get_or_create_actor(
    spec: RetrieverSpec,
    name: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    num_cpus: float = 1.0,
    detached: bool = False,
    batching: Mapping[str, Any] | None = None,
) -> ActorHandle:
    """The named :class:`RetrieverActor` for ``spec``, created if no actor of that name exists.

    ``name`` defaults to :func:`actor_name`; ``num_cpus``, ``detached`` and ``batching`` (``Batcher`` keyword
    arguments) only apply when this call creates the actor.
    """
    _connect_ray()
    options: dict[str, Any] = {
        "name": name or actor_name(spec),
        "namespace": namespace,
        "get_if_exists": True,
        "num_cpus": num_cpus,
        "max_concurrency": 10_000,  # concurrent awaiting callers; the batcher bounds the backend work
    }
    if detached:
        options["lifetime"] = "detached"
    return RetrieverActor.options(**options).remote(spec, batching)


class RayActorRetriever(Retriever):
    """A client of the shared :class:`RetrieverActor` for ``index``: spec ``{"type": "ray", "index": {...}}``.

    The other keys are optional: ``name`` / ``namespace`` of the actor, and for its creation ``num_cpus``,
    ``detached`` and ``batching`` (see :func:`get_or_create_actor`); ``timeout`` bounds one search in seconds.
    Construction blocks until the actor has loaded the index, and raises if it cannot. Search failures (actor
    died, timeout, Ray errors) become error results; after one, the next search gets or creates the actor again.
    """

    name = "ray"

    def __init__(
        self,
        index: RetrieverSpec,
        *,
        name: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        num_cpus: float = 1.0,
        detached: bool = False,
        batching: Mapping[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.index = _normalise(index)
        self.actor_name = name or actor_name(self.index)
        self.namespace = namespace
        self.timeout = float(timeout)
        self._create: dict[str, Any] = {"num_cpus": num_cpus, "detached": detached, "batching": batching}
        self._actor: ActorHandle | None = self._get_actor()
        ray.get(self._actor.stats.remote())  # wait for the index, as in-process backends do; raises if it fails

    def _get_actor(self) -> ActorHandle:
        return get_or_create_actor(self.index, self.actor_name, self.namespace, **self._create)

    @property
    def actor(self) -> ActorHandle:
        """The actor handle, got or created again after a failure."""
        if self._actor is None:
            self._actor = self._get_actor()
        return self._actor

    def describe(self) -> str:
        return f"ray(actor={self.namespace}/{self.actor_name}, index={self.index.get('type')})"

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        try:
            return await asyncio.wait_for(self.actor.search.remote(queries, top_k), self.timeout)
        except asyncio.TimeoutError:
            error = f"timed out after {self.timeout:g}s"
        except Exception as e:  # actor died or unreachable, Ray errors: report, and reconnect next time
            self._actor = None
            error = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
        logger.warning("%s: search failed: %s", self.describe(), error)
        return [SearchResult([], error=error) for _ in queries]


def retrieval_application(
    spec: RetrieverSpec,
    *,
    num_replicas: int = 1,
    num_cpus: float = 1.0,
    index_id: str | None = None,
    **server_options: Any,
) -> Application:
    """A Ray Serve application: ``num_replicas`` copies of :func:`~research_plugin.retrieval.server.create_app`
    over ``spec``, each loading its own index before it takes traffic. ``server_options`` are ``create_app``'s
    keyword arguments (``max_batch``, ``token``, ...)."""
    from ray import serve

    from .server import create_app

    options = _normalise(spec)
    app_index_id = index_id or json.dumps(options, sort_keys=True, default=str)

    @serve.deployment(num_replicas=num_replicas, ray_actor_options={"num_cpus": num_cpus})
    @serve.ingress()
    class RetrievalServer:
        async def __init__(self) -> None:
            self.retriever = await asyncio.to_thread(build_retriever, options)

        def __serve_build_asgi_app__(self) -> Any:
            return create_app(self.retriever, index_id=app_index_id, **server_options)

    return RetrievalServer.bind()


def serve_deployment(
    spec: RetrieverSpec,
    *,
    num_replicas: int = 1,
    route_prefix: str = "/",
    name: str = "retrieval",
    host: str = "127.0.0.1",
    port: int = 8000,
    **options: Any,
) -> str:
    """Deploy :func:`retrieval_application` on Ray Serve (started on ``host:port`` if it is not running) and
    return the URL of its ``/retrieve`` endpoint once every replica is up. ``options`` go to
    :func:`retrieval_application`. Stop it with ``serve.delete(name)`` or ``serve.shutdown()``."""
    from ray import serve

    _connect_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(retrieval_application(spec, num_replicas=num_replicas, **options), name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}/retrieve"
