#!/usr/bin/env python
"""Retrieval-server benchmark: our batching server vs the raw backend vs a per-request server, in one run.

On a deterministic synthetic corpus (Zipf-distributed pseudo-words, ~100 words a passage, titled) it builds, with
research_plugin's own index builder, a BM25 index and/or a dense one (the bundled MiniLM encoder + faiss flat inner
product), cached under ``--work-dir``. For each backend it measures throughput and p50/p99 latency at each
concurrency for

  (a)  ours         ``create_app`` (default batching, result cache off), uvicorn in its own process;
  (a') ours-pN      the same with ``search_processes=N`` (searching in N worker processes);
  (b)  backend      the backend's ``search`` called in-process in batches (the ceiling), in its own process;
  (c)  baseline     a FastAPI sync endpoint calling the backend once per request in the threadpool, own process;

with a light asyncio load client (N coroutines, each on its own keep-alive connection, one Search-R1 ``/retrieve``
query per request, distinct queries) in the main process. ``--backend latency`` replaces the index by a backend of
set latency (``--latency``: stages of a fixed plus a per-query time, slept), a GPU box's regime on any machine.
Every cell is bounded in time and in request count. It prints a table and the target ratios, and writes JSON per
backend (``--out-dir``/retrieval-<backend>[-<encoder dtype>][-quick].json; for the set-latency backend
retrieval-latency.json, or retrieval-latency-<stages>.json for other ``--latency`` stages than the default) and,
with matplotlib, a PNG next to it.

    python bench/retrieval.py --quick                    # smoke run: 20k passages, 3 s cells, both backends
    python bench/retrieval.py --backend bm25             # 100k passages, 10 s cells, ours-p1 and ours-p2 too
    python bench/retrieval.py --backend latency          # the H200's dense backend, as a set latency
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing as mp
import os
import platform
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

# FastAPI resolves the endpoints' (string) annotations in this module's globals, so what they name lives here
import numpy as np  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from tqdm import tqdm  # noqa: E402

from research_plugin.retrieval.latency import LatencyRetriever  # noqa: E402

HOST = "127.0.0.1"
TOP_K = 3  # Search-R1's default topk
QUERY_WORDS = 6
VOCAB_SIZE = 50_000
ZIPF_S = 1.07
FORMAT = 1  # bump when the corpus generator changes, so cached corpora are not reused

BACKENDS = ("bm25", "dense")
LATENCY = "latency"
"""A backend of set latency (no index): ``--latency`` stages of ``fixed + per-query`` time, slept, not computed."""
GPU_BOX_LATENCY = "66.8,0.807"
"""One stage fitted to the lent H200's dense backend (fp16 E5-base encoder on the GPU, faiss-cpu Flat 100k x 768 on
16 cores: batches of 64 and 256 at 540 and 936 q/s, i.e. ~118 and ~273 ms)."""
DENSE_ENCODER = "minilm"  # the bundled offline all-MiniLM-L6-v2

TARGET_AB = 0.9
TARGET_AC = 5.0
RATIO_CONCURRENCY = 64
RATIO_CONCURRENCIES = (64, 256)
ERRORS_CONCURRENCY = 256


# --------------------------------------------------------------------------------------------------------------
# corpus and queries


def _shown(path: Path) -> str:
    """A path as recorded in results: relative to the repository when inside it, so results carry no machine paths."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """``size`` distinct pronounceable pseudo-words of 2-4 consonant-vowel syllables, none an English stopword."""
    from bm25s.stopwords import STOPWORDS_EN

    onsets = list("bcdfghjklmnprstvz") + ["ch", "sh", "th", "br", "tr", "gl"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    syllables = [o + v for o in onsets for v in vowels]
    stop = set(STOPWORDS_EN)
    words: dict[str, None] = {}
    while len(words) < size:
        n = int(rng.integers(2, 5))
        word = "".join(syllables[i] for i in rng.integers(0, len(syllables), n))
        if word not in stop:
            words[word] = None
    return list(words)


def _paths(work_dir: Path, passages: int, seed: int) -> tuple[Path, Path]:
    tag = f"p{passages}-s{seed}-v{FORMAT}"
    return work_dir / f"corpus-{tag}.jsonl", work_dir / f"queries-{tag}.jsonl"


def _index_dir(work_dir: Path, backend: str, passages: int, seed: int, passage_tokens: int) -> Path:
    settings = f"-{DENSE_ENCODER}-t{passage_tokens}" if backend == "dense" else ""
    return work_dir / f"index-{backend}{settings}-p{passages}-s{seed}-v{FORMAT}"


def generate_corpus(corpus_path: Path, queries_path: Path, passages: int, seed: int) -> None:
    """Write ``passages`` rows ``{id, title, text}`` and one query per passage (in shuffled order), atomically."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, VOCAB_SIZE)
    ranks = np.arange(1, VOCAB_SIZE + 1, dtype=np.float64)
    probs = ranks**-ZIPF_S
    probs /= probs.sum()
    qrng = np.random.default_rng([seed, 1])
    order = qrng.permutation(passages)  # query i comes from passage order[i]
    query_of: dict[int, str] = {}
    corpus_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_corpus, tmp_queries = corpus_path.with_suffix(".tmp"), queries_path.with_suffix(".tmp")
    chunk = 5000
    with open(tmp_corpus, "w", encoding="utf-8") as out, tqdm(total=passages, desc="corpus", unit="psg") as bar:
        for lo in range(0, passages, chunk):
            hi = min(passages, lo + chunk)
            lengths = rng.integers(80, 121, hi - lo)
            words = rng.choice(VOCAB_SIZE, size=int(lengths.sum()), p=probs)
            title_words = rng.integers(1000, VOCAB_SIZE, (hi - lo, 3))
            title_lens = rng.integers(1, 4, hi - lo)
            pos = 0
            for k in range(hi - lo):
                ids = words[pos : pos + lengths[k]]
                pos += lengths[k]
                text = " ".join(vocab[i] for i in ids)
                title = " ".join(vocab[i].capitalize() for i in title_words[k, : title_lens[k]])
                out.write(json.dumps({"id": str(lo + k), "title": title, "text": text}) + "\n")
                # query: QUERY_WORDS distinct word types of this passage, picked uniformly among its types
                types = np.unique(ids)
                picked = qrng.choice(types, size=min(QUERY_WORDS, len(types)), replace=False)
                query_of[lo + k] = " ".join(vocab[i] for i in picked)
            bar.update(hi - lo)
    with open(tmp_queries, "w", encoding="utf-8") as out:
        for pid in order.tolist():
            out.write(json.dumps({"query": query_of[pid], "id": str(pid)}) + "\n")
    os.replace(tmp_queries, queries_path)
    os.replace(tmp_corpus, corpus_path)  # last: its presence means both are complete


def load_queries(path: Path) -> list[tuple[str, str]]:
    """(query, source passage id) pairs, with repeated query texts dropped (the cache and dedup must not help)."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            norm = " ".join(row["query"].lower().split())
            if norm not in seen:
                seen.add(norm)
                out.append((row["query"], row["id"]))
    return out


@contextlib.contextmanager
def _ticker(desc: str) -> Iterator[None]:
    """A tqdm line that shows elapsed time while an opaque step runs (the index build has no progress hook)."""
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", mininterval=0.5)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def build_index(backend: str, corpus_path: Path, index_dir: Path, passage_tokens: int) -> dict[str, Any]:
    """Build ``backend``'s index of the corpus into ``index_dir`` with research_plugin's index builder, once: the
    builder moves a finished index into place atomically, so a folder with a manifest is complete and is reused.
    Dense passages are embedded up to ``passage_tokens`` word pieces (the one-time build dominates a run on a few
    cores; a query's cost, encoding it and scanning every vector, does not depend on it)."""
    from research_plugin.retrieval.index_builder import build_index as build

    start = time.perf_counter()
    manifest_path = index_dir / "manifest.json"
    cached = manifest_path.exists()
    if not cached:
        if backend == "dense":
            from research_plugin.retrieval.dense import Encoder

            encoder = Encoder(DENSE_ENCODER)
            encoder.model.max_seq_length = passage_tokens
            build(corpus_path, index_dir, backend="dense", encoder=encoder, index_type="Flat", shard_size=10_000)
        else:
            with _ticker("bm25 index"):  # bm25s's own steps show no progress here
                build(corpus_path, index_dir, backend="bm25")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("backend", "bm25") != backend:
        raise RuntimeError(f"{index_dir} holds a {manifest.get('backend')} index, not {backend}")
    gc.collect()
    info: dict[str, Any] = {
        "backend": backend,
        "passages": manifest["passages"],
        "loaded_from_cache": cached,
        "seconds": round(time.perf_counter() - start, 2),
        "index_dir": _shown(index_dir),
    }
    if backend == "dense":
        info.update(encoder=manifest["encoder"]["name"], factory=manifest["factory"], passage_tokens=passage_tokens)
    return info


# --------------------------------------------------------------------------------------------------------------
# a backend of set latency: the regime of a GPU box, reproduced on any machine


def parse_latency(text: str) -> list[tuple[float, float]]:
    """``"FIXED_MS,PER_QUERY_MS[;FIXED_MS,PER_QUERY_MS]"`` -> stages."""
    stages = [tuple(float(x) for x in part.split(",")) for part in text.split(";") if part.strip()]
    if not stages or any(len(s) != 2 or min(s) < 0 for s in stages):
        raise ValueError(f"--latency takes FIXED_MS,PER_QUERY_MS[;FIXED_MS,PER_QUERY_MS], not {text!r}")
    return stages  # type: ignore[return-value]


def make_backend(spec: dict[str, Any]) -> Any:
    """The backend a spec names: the latency stand-in (``research_plugin.retrieval.latency``) or a real retriever."""
    from research_plugin.retrieval import build_retriever

    return build_retriever(spec)


# --------------------------------------------------------------------------------------------------------------
# servers (each in its own spawned process)


def _ours_app(spec: dict[str, Any], search_processes: int) -> Any:
    from functools import partial

    from research_plugin.retrieval.server import create_app

    index_id = spec.get("index_dir", spec["type"])
    return create_app(partial(make_backend, spec), index_id=index_id, cache_size=0, search_processes=search_processes)


class RetrieveRequest(BaseModel):
    """Search-R1's ``/retrieve`` body, for the baseline."""

    queries: list[str]
    topk: int | None = None
    return_scores: bool = False


def _baseline_app(spec: dict[str, Any]) -> Any:
    """The common design: a sync FastAPI endpoint (so FastAPI runs it in its threadpool) that searches the backend
    once per request, answering through FastAPI's router with ``JSONResponse``. Same response shape as ours, which
    dispatches past the router and renders with orjson: (c) differs in request handling and in serialisation."""
    retriever: Any = make_backend(spec)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/retrieve")
    def retrieve(req: RetrieveRequest) -> JSONResponse:
        # the backend's synchronous search (what its async search runs in a thread), one request at a time
        found = retriever._search_sync(req.queries, req.topk or TOP_K)
        docs = [[{"id": p.id, "contents": p.contents} for p in r.passages] for r in found]
        return JSONResponse({"result": docs})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


_TRIVIAL_BODY = json.dumps({"result": [[{"id": str(i), "contents": '"T"\n' + "word " * 100} for i in range(TOP_K)]]})


def _trivial_app() -> Any:
    """A FastAPI ``/retrieve`` that reads the body and answers a fixed ~1.5 KB result: client + HTTP-stack floor."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    body = _TRIVIAL_BODY.encode()

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _server_main(kind: str, spec: dict[str, Any], port: int, search_processes: int) -> None:
    import uvicorn
    from tqdm.std import tqdm as std_tqdm

    # bm25s makes a (disabled) tqdm per search, and tqdm's default lock is a multiprocessing semaphore, which
    # leaks (a resource_tracker warning) when uvicorn ends by re-raising SIGTERM: a thread lock is enough here
    std_tqdm.set_lock(threading.RLock())
    logging.basicConfig(level=logging.WARNING)
    makers = {"ours": lambda: _ours_app(spec, search_processes), "baseline": lambda: _baseline_app(spec)}
    app = makers.get(kind, _trivial_app)()
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """A uvicorn server in a spawned process (not a daemon: it may start search processes of its own);
    ``with Server(...) as server:`` waits until ``/health`` is 200."""

    def __init__(
        self, kind: str, spec: dict[str, Any] | None, search_processes: int = 0, start_timeout: float = 300.0
    ) -> None:
        self.kind, self.spec, self.search_processes = kind, spec or {}, search_processes
        self.start_timeout = start_timeout
        self.port = _free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.proc: mp.process.BaseProcess | None = None

    def __enter__(self) -> Server:
        ctx = mp.get_context("spawn")
        args = (self.kind, self.spec, self.port, self.search_processes)
        self.proc = ctx.Process(target=_server_main, args=args, daemon=False)
        self.proc.start()
        asyncio.run(self._wait_healthy())
        return self

    async def _wait_healthy(self) -> None:
        import aiohttp

        deadline = time.monotonic() + self.start_timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if not self.proc.is_alive():
                    raise RuntimeError(f"{self.kind} server exited with code {self.proc.exitcode}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(self.base + "/health") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.kind} server not healthy after {self.start_timeout} s")

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the server process (all its threads) and its search processes."""
        import psutil

        assert self.proc is not None and self.proc.pid is not None
        main = psutil.Process(self.proc.pid)
        total = 0.0
        for proc in [main, *main.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system
        return total

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(15)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)


# --------------------------------------------------------------------------------------------------------------
# load client


class QueryFeed:
    """Hands out queries in order, wrapping around; shared by all cells of a system so no query repeats soon."""

    def __init__(self, queries: list[tuple[str, str]], start: int = 0) -> None:
        self.queries, self.pos = queries, start

    def next(self) -> str:
        q = self.queries[self.pos % len(self.queries)][0]
        self.pos += 1
        return q


@dataclass
class Cell:
    system: str
    concurrency: int
    duration_s: float
    completed: int = 0  # OK responses that finished inside the measurement window
    issued: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0  # warm-up + window + the tail of requests in flight at the end
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    foreign_cpu_s: float = 0.0  # CPU time other processes on the machine used during the cell
    server_metrics: dict[str, Any] | None = None

    @property
    def qps(self) -> float:
        return self.completed / self.duration_s

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        out: dict[str, Any] = {
            "system": self.system,
            "concurrency": self.concurrency,
            "qps": round(self.qps, 1),
            "p50_ms": _pct(lat, 50),
            "p99_ms": _pct(lat, 99),
            "completed": self.completed,
            "issued": self.issued,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "client_cpu_us_per_req": round(1e6 * self.client_cpu_s / max(1, self.issued), 1),
            "client_cores": round(self.client_cpu_s / max(1e-9, self.wall_s), 2),
            "foreign_cores": round(self.foreign_cpu_s / max(1e-9, self.wall_s), 2),
        }
        if self.server_cpu_s is not None:
            out["server_cpu_us_per_req"] = round(1e6 * self.server_cpu_s / max(1, self.issued), 1)
            out["server_cores"] = round(self.server_cpu_s / max(1e-9, self.wall_s), 2)
        if self.server_metrics is not None:
            out["server_metrics"] = self.server_metrics
        return out


def _pct(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 2)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time, reading ``Content-Length`` answers. The load
    client is this rather than aiohttp because its cost is in the measured cycle: a batch's clients get their
    answers and ask again between two backend calls, and aiohttp took 100-160 us of the client's core a request,
    ~40 ms at 256 clients, as much as the server's own HTTP work (and the clients of a real service are many
    processes, not one core)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0 or self._answer is None or self._answer.done():
            return
        head = bytes(self._buffer[:head_end]).split(b"\r\n")
        length = next(
            (int(v) for k, _, v in (h.partition(b":") for h in head[1:]) if k.lower() == b"content-length"), -1
        )
        if length < 0:
            self._answer.set_exception(RuntimeError("answer without Content-Length"))
            return
        if len(self._buffer) >= head_end + 4 + length:
            body = bytes(self._buffer[head_end + 4 : head_end + 4 + length])
            del self._buffer[: head_end + 4 + length]
            self._answer.set_result((int(head[0].split()[1]), body))

    async def post(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._answer


async def _load(
    url: str, feed: QueryFeed, cell: Cell, warmup_s: float, max_requests: int, request_timeout_s: float
) -> None:
    """``cell.concurrency`` coroutines, each posting one query at a time on its own connection until the window
    ends or ``max_requests`` were issued. Latency is recorded for OK requests started inside the window;
    throughput counts OK responses finished inside it; errors count every non-200 or exception of the whole cell."""
    from urllib.parse import urlsplit

    where = urlsplit(url)
    host, port = where.hostname or HOST, where.port or 80
    head = f"POST {where.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n".encode()
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    t_measure = t0 + warmup_s
    t_end = t_measure + cell.duration_s

    async def worker() -> None:
        connection: _Connection | None = None

        async def exchange(request: bytes) -> int:
            """Connect if need be, post, and return the status: one request, bounded by one timeout."""
            nonlocal connection
            if connection is None or connection.closed:
                _, connection = await loop.create_connection(_Connection, host, port)
            status, _ = await connection.post(request)
            return status

        try:
            while True:
                if cell.issued >= max_requests or time.perf_counter() >= t_end:
                    return
                cell.issued += 1
                body = json.dumps({"queries": [feed.next()], "topk": TOP_K, "return_scores": False}).encode()
                start = time.perf_counter()
                status: int | str
                try:
                    request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
                    status = await asyncio.wait_for(exchange(request), request_timeout_s)
                except Exception as e:  # noqa: BLE001 - every failure is an error of the cell
                    status = type(e).__name__
                    if connection is not None and connection.transport is not None:
                        connection.transport.close()
                    connection = None
                end = time.perf_counter()
                if status != 200:
                    cell.errors += 1
                    cell.error_kinds[str(status)] += 1
                elif start >= t_measure:
                    cell.latencies_ms.append((end - start) * 1000.0)
                if status == 200 and t_measure <= end <= t_end:
                    cell.completed += 1
        finally:
            if connection is not None and connection.transport is not None:
                connection.transport.close()

    await asyncio.gather(*(worker() for _ in range(cell.concurrency)))


async def _get_json(url: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as resp:
            return dict(await resp.json())


async def _retrieve_ids(url: str, queries: list[str]) -> list[list[str]]:
    """One request per query, sequentially: the ids each query's answer lists."""
    import aiohttp

    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for q in queries:
            async with session.post(url, json={"queries": [q], "topk": TOP_K}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"{url} answered {resp.status}: {(await resp.text())[:300]}")
                body = await resp.json()
                out.append([d["id"] for d in body["result"][0]])
    return out


def _metrics_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the server's /metrics counted during one cell: backend batches, their sizes, dedup, rejections."""
    b0, b1 = before["batches"], after["batches"]
    batches = b1["count"] - b0["count"]
    queries = b1["queries"] - b0["queries"]
    hist = {k: v - b0["histogram"].get(k, 0) for k, v in b1["histogram"].items() if v - b0["histogram"].get(k, 0)}
    return {
        "batches": batches,
        "queries": queries,
        "mean_batch": round(queries / batches, 1) if batches else 0.0,
        "batch_histogram": hist,
        "joined_in_flight": after["cache"]["joined_in_flight"] - before["cache"]["joined_in_flight"],
        "cache_hits": after["cache"]["hits"] - before["cache"]["hits"],
        "rejected_429": after["rejected_429"] - before["rejected_429"],
        # the server's own view, over its last 10k searches (mostly this cell's)
        "server_last10k_p50_ms": after["latency_ms"].get("p50"),
        "server_last10k_p99_ms": after["latency_ms"].get("p99"),
    }


def _busy_cpu_seconds() -> float:
    """Machine-wide non-idle CPU seconds so far (all cores)."""
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait`` s) until the machine's busy CPU over 1 s is under ``threshold`` cores: other
    people's test runs on a 2-core machine would distort the numbers. Returns the last busy level seen."""
    deadline = time.monotonic() + max_wait
    while True:
        before = _busy_cpu_seconds()
        time.sleep(1.0)
        busy = _busy_cpu_seconds() - before
        if busy < threshold or time.monotonic() >= deadline:
            if busy >= threshold:
                print(f"  (machine still busy: {busy:.2f} cores used by others; measuring anyway)", flush=True)
            return busy


def run_server_cells(
    server: Server,
    system: str,
    feed: QueryFeed,
    concurrencies: list[int],
    duration: float,
    warmup: float,
    max_requests: int,
    with_metrics: bool,
    quiet_wait: float,
) -> list[Cell]:
    cells = []
    for n in concurrencies:
        cell = Cell(system, n, duration)
        before = asyncio.run(_get_json(server.base + "/metrics")) if with_metrics else None
        gc.collect()
        wait_quiet(quiet_wait)
        cpu0, scpu0, all0, t0 = time.process_time(), server.cpu_seconds(), _busy_cpu_seconds(), time.perf_counter()
        asyncio.run(_load(server.base + "/retrieve", feed, cell, warmup, max_requests, request_timeout_s=30.0))
        cell.wall_s = time.perf_counter() - t0
        cell.client_cpu_s = time.process_time() - cpu0
        cell.server_cpu_s = server.cpu_seconds() - scpu0
        cell.foreign_cpu_s = max(0.0, _busy_cpu_seconds() - all0 - cell.client_cpu_s - cell.server_cpu_s)
        if before is not None:
            cell.server_metrics = _metrics_delta(before, asyncio.run(_get_json(server.base + "/metrics")))
        s = cell.summary()
        extra = f" mean batch {cell.server_metrics['mean_batch']}" if cell.server_metrics else ""
        extra += f" error kinds {dict(cell.error_kinds)}" if cell.errors else ""
        print(
            f"  {system:<9} c={n:<4} {s['qps']:8.1f} q/s  p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms  "
            f"errors {cell.errors}  server {s['server_cpu_us_per_req']} us CPU/req, {s['server_cores']} cores; "
            f"client {s['client_cores']}, others {s['foreign_cores']} cores{extra}",
            flush=True,
        )
        cells.append(cell)
        time.sleep(0.5)  # let closed connections drain
    return cells


# --------------------------------------------------------------------------------------------------------------
# (b) the raw backend, in its own process


def _backend_main(
    spec: dict[str, Any], queries: list[tuple[str, str]], batch_sizes: list[int], duration: float, spot: int
) -> dict[str, Any]:
    retriever = make_backend(spec)

    async def go() -> dict[str, Any]:
        texts = [q for q, _ in queries]
        # spot check: the passage a query was drawn from should usually rank first
        found = await retriever.search(texts[:spot], TOP_K)
        ids = [[p.id for p in r.passages] for r in found]
        top1 = sum(1 for (q, pid), got in zip(queries[:spot], ids) if got[:1] == [pid])
        top3 = sum(1 for (q, pid), got in zip(queries[:spot], ids) if pid in got)
        results: dict[str, Any] = {"spot": {"n": spot, "top1": top1, "top3": top3, "ids": ids}, "batches": {}}
        await retriever.search(texts[spot : spot + 64], TOP_K)  # warm-up
        pos = spot + 64
        for bs in batch_sizes:
            done, times = 0, []
            cpu0, all0, start = time.process_time(), _busy_cpu_seconds(), time.perf_counter()
            deadline = start + duration
            while time.perf_counter() < deadline and done < len(texts):
                batch = [texts[(pos + i) % len(texts)] for i in range(bs)]
                pos += bs
                t = time.perf_counter()
                await retriever.search(batch, TOP_K)
                times.append((time.perf_counter() - t) * 1000.0)
                done += bs
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
            foreign = max(0.0, _busy_cpu_seconds() - all0 - cpu) / wall
            times.sort()
            results["batches"][str(bs)] = {
                "batch": bs,
                "qps": round(done / wall, 1),
                "queries": done,
                "batch_p50_ms": _pct(times, 50),
                "batch_p99_ms": _pct(times, 99),
                "cpu_us_per_query": round(1e6 * cpu / done, 1),
                "cores": round(cpu / wall, 2),
                "foreign_cores": round(foreign, 2),
            }
            print(
                f"  backend   batch={bs:<4} {done / wall:8.1f} q/s  ({done} queries, {1e6 * cpu / done:.0f} us CPU/q, "
                f"{cpu / wall:.2f} cores; others {foreign:.2f} cores)"
            )
        return results

    return asyncio.run(go())


def run_backend(
    spec: dict[str, Any], queries: list[tuple[str, str]], batch_sizes: list[int], duration: float, spot: int
) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_backend_main, spec, queries, batch_sizes, duration, spot).result()


# --------------------------------------------------------------------------------------------------------------
# report


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def _label(system: str) -> str:
    if system == "ours":
        return "(a) ours"
    if system.startswith("ours-p"):
        n = int(system.removeprefix("ours-p"))
        return f"(a') ours, {n} search process{'es' if n > 1 else ''}"
    return "(c) per-request baseline"


def print_table(summary: dict[str, Any]) -> None:
    """One row per cell; CPU columns: us of server CPU per request, and cores used by server / client / others."""
    print()
    print(
        f"{'system':<10}{'conc':>6}{'q/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}{'srv us/req':>11}"
        f"{'srv cores':>10}{'cli cores':>10}{'others':>8}{'mean batch':>11}"
    )
    for row in summary["servers"]:
        m = row.get("server_metrics") or {}
        print(
            f"{row['system']:<10}{row['concurrency']:>6}{row['qps']:>9.1f}{_fmt(row['p50_ms']):>9}"
            f"{_fmt(row['p99_ms']):>9}{row['errors']:>7}{_fmt(row.get('server_cpu_us_per_req'), '.0f'):>11}"
            f"{_fmt(row.get('server_cores'), '.2f'):>10}{_fmt(row['client_cores'], '.2f'):>10}"
            f"{_fmt(row['foreign_cores'], '.2f'):>8}{_fmt(m.get('mean_batch')):>11}"
        )
    for b in summary["backend"]["batches"].values():
        print(
            f"{'backend':<10}{'b=' + str(b['batch']):>6}{b['qps']:>9.1f}{'-':>9}{'-':>9}{'-':>7}"
            f"{_fmt(b['cpu_us_per_query'], '.0f'):>11}{_fmt(b['cores'], '.2f'):>10}{'-':>10}"
            f"{_fmt(b['foreign_cores'], '.2f'):>8}{b['batch']:>11}"
        )
    print()
    for r in summary["ratios"]:
        print(f"{r['name']:<52} {_fmt(r['value'], '.3g'):>8}   target {r['target']:<6} {r['verdict']}")


def make_plot(summary: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: skipping the plot"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    systems = list(dict.fromkeys(r["system"] for r in summary["servers"]))
    for system in systems:
        rows = [r for r in summary["servers"] if r["system"] == system]
        style = "s--" if system == "baseline" else ("o-" if system == "ours" else "^-")
        ax.plot([r["concurrency"] for r in rows], [r["qps"] for r in rows], style, label=_label(system))
    for b, ls in zip(summary["backend"]["batches"].values(), (":", "-.", "--", (0, (1, 3)))):
        ax.axhline(b["qps"], color="gray", linestyle=ls, label=f"(b) backend in-process, batch {b['batch']}")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["concurrency"] for r in summary["servers"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("queries / s")
    dtype = summary["config"].get("encoder_dtype", "float32")
    kind = summary["index"]["backend"]
    if kind == LATENCY:
        stages = "; ".join(f"{f:g} ms + {q:g} ms/query" for f, q in summary["index"]["stages_ms"])
        ax.set_title(f"set-latency backend ({stages}) /retrieve, {os.cpu_count()} cores", fontsize="medium")
    else:
        what = "BM25" if kind == "bm25" else f"dense (MiniLM {dtype} + faiss Flat IP)"
        ax.set_title(f"{what} /retrieve, {summary['corpus']['passages']:,} passages, {os.cpu_count()} cores")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


def _ratios(servers: list[dict[str, Any]], backend: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, for each configuration of our server measured: (a)/(b) and (a)/(c) at each of
    ``RATIO_CONCURRENCIES`` clients (b: the backend in batches of that many), errors at ``ERRORS_CONCURRENCY``."""

    def qps(system: str, n: int) -> float | None:
        return next((r["qps"] for r in servers if r["system"] == system and r["concurrency"] == n), None)

    def verdict(value: float | None, ok: bool) -> str:
        return "n/a (not measured)" if value is None else ("PASS" if ok else "FAIL")

    def ratio(x: float | None, y: float | None) -> float | None:
        return x / y if x is not None and y else None

    out = []
    for system in dict.fromkeys(r["system"] for r in servers if r["system"] != "baseline"):
        for n in RATIO_CONCURRENCIES:
            ab = ratio(qps(system, n), backend["batches"].get(str(n), {}).get("qps"))
            ac = ratio(qps(system, n), qps("baseline", n))
            out += [
                {
                    "name": f"{system}: (a)/(b) at {n} clients (b = batch {n})",
                    "value": ab,
                    "target": f">={TARGET_AB}",
                    "verdict": verdict(ab, ab is not None and ab >= TARGET_AB),
                },
                {
                    "name": f"{system}: (a)/(c) at {n} clients",
                    "value": ac,
                    "target": f">={TARGET_AC:g}",
                    "verdict": verdict(ac, ac is not None and ac >= TARGET_AC),
                },
            ]
        errs = next(
            (r["errors"] for r in servers if r["system"] == system and r["concurrency"] == ERRORS_CONCURRENCY), None
        )
        out.append(
            {
                "name": f"{system}: errors at {ERRORS_CONCURRENCY} clients",
                "value": errs,
                "target": "0",
                "verdict": verdict(errs, errs == 0),
            }
        )
    return out


def _environment(backends: list[str]) -> dict[str, Any]:
    import importlib.metadata as md
    import importlib.util

    packages = ["fastapi", "starlette", "uvicorn", "aiohttp", "numpy", "pydantic"]
    packages += ["bm25s"] if "bm25" in backends else []
    packages += ["faiss-cpu", "faiss-gpu", "torch", "sentence-transformers"] if "dense" in backends else []
    versions = {}
    for pkg in packages:
        with contextlib.suppress(md.PackageNotFoundError):
            versions[pkg] = md.version(pkg)
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "versions": versions,
        # without these uvicorn falls back to the asyncio loop and the pure-Python h11 parser
        "uvloop": importlib.util.find_spec("uvloop") is not None,
        "httptools": importlib.util.find_spec("httptools") is not None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--backend",
        choices=[*BACKENDS, "both", LATENCY],
        default="both",
        help="index to measure (default both: bm25 and dense); latency: a backend of set latency, no index",
    )
    p.add_argument(
        "--latency",
        default=GPU_BOX_LATENCY,
        help="with --backend latency: FIXED_MS,PER_QUERY_MS a batch, per stage, stages separated by ';' (default "
        f"{GPU_BOX_LATENCY}: the dense backend measured on an H200, fp16 E5-base-shaped encoder + faiss-cpu Flat "
        "over 100k x 768)",
    )
    p.add_argument("--passages", type=int, help="corpus size (default 100000; 20000 with --quick)")
    p.add_argument("--duration", type=float, help="seconds measured per cell (default 10; 3 with --quick)")
    p.add_argument("--warmup", type=float, help="seconds of unmeasured load before each cell (default 1; 0.5 quick)")
    p.add_argument("--concurrency", default="1,16,64,256", help="comma-separated client counts")
    p.add_argument("--batch-sizes", default="1,64,256", help="backend batch sizes for (b)")
    p.add_argument("--max-requests", type=int, default=200_000, help="cap on requests per cell")
    p.add_argument(
        "--systems",
        help="servers to load: ours, procs (ours-pN), baseline (default all; ours,baseline for --backend latency)",
    )
    p.add_argument("--search-processes", default="1,2", help="comma-separated N: one ours-pN server each")
    p.add_argument(
        "--threads",
        type=int,
        help="OpenMP threads (torch, faiss) in every measured process (default: the libraries' own, one per core)",
    )
    p.add_argument(
        "--encoder-dtype",
        default="float32",
        help="dense query encoder precision: float32 or bfloat16 (AVX512-BF16 CPUs)",
    )
    p.add_argument("--passage-tokens", type=int, default=64, help="word pieces embedded per passage in the dense build")
    p.add_argument("--quick", action="store_true", help="smoke run: 20k passages, 3 s cells")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=REPO / "bench" / ".work", help="corpus and index cache")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results", help="results JSON and PNG")
    p.add_argument("--spot", type=int, default=200, help="queries checked against their source passage")
    p.add_argument(
        "--quiet-wait", type=float, default=60.0, help="before each cell, wait up to this long for an idle machine"
    )
    args = p.parse_args(argv)
    args.backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    args.passages = args.passages or (20_000 if args.quick else 100_000)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    if args.systems is None:
        args.systems = "ours,baseline" if args.backend == LATENCY else "ours,procs,baseline"
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    try:
        args.stages = parse_latency(args.latency)
    except ValueError as e:
        p.error(str(e))
    if args.passages < 1000 or args.duration <= 0 or min(args.concurrency) < 1 or min(args.batch_sizes) < 1:
        p.error("need --passages >= 1000, --duration > 0, concurrency and batch sizes >= 1")
    if set(args.systems) - {"ours", "procs", "baseline"}:
        p.error("--systems takes ours, procs and/or baseline")
    args.search_processes = [int(x) for x in args.search_processes.split(",") if x.strip()]
    if (
        min(args.search_processes, default=1) < 1
        or args.passage_tokens < 8
        or (args.threads is not None and args.threads < 1)
    ):
        p.error("need --search-processes >= 1, --passage-tokens >= 8 and --threads >= 1")
    return args


def measure_client(queries: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    """The load client's own cost, against a trivial FastAPI endpoint (no search)."""
    print("client overhead, against a trivial FastAPI endpoint (no search):")
    trivial_n = RATIO_CONCURRENCY if RATIO_CONCURRENCY in args.concurrency else max(args.concurrency)
    with Server("trivial", None) as server:
        cell = run_server_cells(
            server,
            "trivial",
            QueryFeed(queries),
            [trivial_n],
            min(args.duration, 5.0),
            args.warmup,
            args.max_requests,
            with_metrics=False,
            quiet_wait=args.quiet_wait,
        )[0]
    client = cell.summary()
    client_us = client["client_cpu_us_per_req"]
    print(
        f"  -> client {client_us} us CPU/request (one client core saturates at ~{1e6 / max(1.0, client_us):.0f} "
        f"req/s); server HTTP stack {client['server_cpu_us_per_req']} us CPU/request"
    )
    return client


def run_one_backend(
    backend_name: str,
    build: dict[str, Any] | None,
    corpus_path: Path,
    queries: list[tuple[str, str]],
    client: dict[str, Any],
    env: dict[str, Any],
    args: argparse.Namespace,
) -> Path:
    """Measure (b), then each server, over the index ``build`` describes (none for the set-latency backend); write
    and return the JSON."""
    started = time.time()
    print(f"\n=== {backend_name} ===")
    spec: dict[str, Any]
    if build is None:
        spec = {"type": LATENCY, "stages": args.stages}
        print(f"backend: {LatencyRetriever([list(s) for s in args.stages]).describe()}, no index")
    else:
        index_dir = _index_dir(args.work_dir, backend_name, args.passages, args.seed, args.passage_tokens)
        print(
            f"index: {build['passages']} passages, {'cached' if build['loaded_from_cache'] else 'built'} "
            f"in {build['seconds']} s ({index_dir})"
        )
        spec = {"type": backend_name, "index_dir": str(index_dir)}
        if backend_name == "dense":
            spec["encoder_dtype"] = args.encoder_dtype

    print("(b) backend, in-process batches:")
    spot = min(args.spot, len(queries) // 4)
    wait_quiet(args.quiet_wait)
    backend = run_backend(spec, queries, args.batch_sizes, args.duration, spot)
    spot_ids = backend["spot"].pop("ids")
    s = backend["spot"]
    if build is not None:  # the set-latency backend's passages are made up: only the servers' identity check holds
        print(
            f"  spot check: source passage ranked 1st for {s['top1']}/{s['n']}, in top {TOP_K} for {s['top3']}/{s['n']}"
        )

    systems = [
        y for x in args.systems for y in ([f"ours-p{n}" for n in args.search_processes] if x == "procs" else [x])
    ]
    servers: list[Cell] = []
    spot_check: dict[str, Any] = {}
    for i, system in enumerate(systems):
        processes = int(system.removeprefix("ours-p")) if system.startswith("ours-p") else 0
        print(f"{_label(system)}:")
        with Server("baseline" if system == "baseline" else "ours", spec, processes) as server:
            got = asyncio.run(_retrieve_ids(server.base + "/retrieve", [q for q, _ in queries[:20]]))
            same = sum(1 for x, y in zip(got, spot_ids[:20]) if x == y)
            spot_check[system] = {"n": len(got), "same_as_backend": same}
            print(f"  spot check: {same}/{len(got)} answers identical to the in-process backend's")
            # each system reads the query list from its own offset, so the systems search different, distinct queries
            feed = QueryFeed(queries, start=spot + (i + 1) * len(queries) // (len(systems) + 1))
            servers += run_server_cells(
                server,
                system,
                feed,
                args.concurrency,
                args.duration,
                args.warmup,
                args.max_requests,
                with_metrics=system != "baseline",
                quiet_wait=args.quiet_wait,
            )

    rows = [c.summary() for c in servers]
    summary = {
        "config": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": env,
        "corpus": {
            "path": _shown(corpus_path),
            "passages": args.passages,
            "vocab": VOCAB_SIZE,
            "zipf_s": ZIPF_S,
            "queries": len(queries),
            "query_words": QUERY_WORDS,
            "top_k": TOP_K,
        },
        "index": build if build is not None else {"backend": LATENCY, "stages_ms": args.stages},
        "spot_check": {"backend": s, **spot_check},
        "client_overhead": client,
        "backend": backend,
        "servers": rows,
        "ratios": _ratios(rows, backend),
        "wall_s": round(time.time() - started, 1),
    }
    print_table(summary)
    out = args.out_dir / f"retrieval-{backend_name}{_variant(args, backend_name)}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nresults: {out}")
    print(make_plot(summary, out.with_suffix(".png")))
    print(f"{backend_name}: wall time {summary['wall_s']} s")
    return out


def _variant(args: argparse.Namespace, backend_name: str) -> str:
    """What tells this run's result file from the default configuration's."""
    if backend_name == "dense" and args.encoder_dtype != "float32":
        return f"-{args.encoder_dtype}"
    if backend_name == LATENCY and args.latency != GPU_BOX_LATENCY:
        return "-" + "-".join(f"{f:g}+{q:g}" for f, q in args.stages)
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    if args.threads is not None:  # inherited by every spawned server, backend and search process
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    # what `research-plugin serve` sets (see cmd_serve), for every measured process alike: (b) and (c) too
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env = _environment(args.backends)
    print(
        f"python {env['python']}, {env['cpus']} CPUs, uvloop={env['uvloop']}, httptools={env['httptools']}, "
        f"{' '.join(f'{k} {v}' for k, v in env['versions'].items())}"
    )

    corpus_path, queries_path = _paths(args.work_dir, args.passages, args.seed)
    if corpus_path.exists() and queries_path.exists():
        print(f"corpus: reusing {corpus_path}")
    else:
        generate_corpus(corpus_path, queries_path, args.passages, args.seed)
    queries = load_queries(queries_path)
    print(f"queries: {len(queries)} distinct ({QUERY_WORDS} words each, from known passages)")
    builds: dict[str, dict[str, Any] | None] = {  # every index first: the builds are the long, unmeasured part
        name: None
        if name == LATENCY
        else build_index(
            name,
            corpus_path,
            _index_dir(args.work_dir, name, args.passages, args.seed, args.passage_tokens),
            args.passage_tokens,
        )
        for name in args.backends
    }

    gc.collect()
    gc.freeze()  # the load client's heap is stable from here: keep collections short
    client = measure_client(queries, args)
    for backend_name in args.backends:
        run_one_backend(backend_name, builds[backend_name], corpus_path, queries, client, env, args)
    print(f"\nwall time {round(time.time() - started, 1)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
