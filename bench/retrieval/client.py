"""The load client: N coroutines, each on its own keep-alive connection, and the cells it measures."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import HOST, TOP_K
from .servers import Server

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
