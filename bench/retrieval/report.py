"""The table, the plot, the target ratios and the environment recorded with the results."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

from . import ERRORS_CONCURRENCY, LATENCY, RATIO_CONCURRENCIES, TARGET_AB, TARGET_AC

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
