"""(b) the raw backend, called in-process in batches in its own process: the ceiling."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any

from . import TOP_K
from .backends import make_backend
from .client import _busy_cpu_seconds, _pct

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
