"""The command line: build what is needed, measure every system, write the results."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from research_plugin.retrieval.latency import LatencyRetriever

from . import BACKENDS, GPU_BOX_LATENCY, LATENCY, QUERY_WORDS, RATIO_CONCURRENCY, REPO, TOP_K, VOCAB_SIZE, ZIPF_S
from . import __doc__ as BENCH_DOC
from .backend_run import run_backend
from .backends import parse_latency
from .client import Cell, QueryFeed, _retrieve_ids, run_server_cells, wait_quiet
from .corpus import _index_dir, _paths, _shown, build_index, generate_corpus, load_queries
from .report import _environment, _label, _ratios, make_plot, print_table
from .servers import Server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=BENCH_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
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
