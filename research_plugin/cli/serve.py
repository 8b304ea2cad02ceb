"""``research-plugin serve``: serve an index over HTTP (Search-R1 and FlashRAG APIs) with cross-request batching and
a result cache."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a retrieval index over HTTP (Search-R1 /retrieve, FlashRAG /search)")
    p.add_argument(
        "--index",
        default="two_hop",
        help="'two_hop' (bundled), a jsonl corpus (BM25), a saved index folder or a Lucene index",
    )
    p.add_argument("--corpus", help="the jsonl a Lucene index was built from, when it stores no document text")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=256, help="most queries per backend call")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=3.0,
        help="shortest wait for the clients the last second saw active; the wait is a quarter of the backend's "
        "measured batch time when that is longer (default 3; 0: never wait)",
    )
    p.add_argument("--max-queue", type=int, default=1024, help="queued queries before requests get 429")
    p.add_argument("--cache-size", type=int, default=100_000, help="cached results (0 disables the cache)")
    p.add_argument("--max-topk", type=int, default=100)
    p.add_argument("--max-queries", type=int, default=512, help="most queries in one request")
    p.add_argument(
        "--search-processes",
        type=int,
        default=0,
        help="search in N worker processes, each loading the index (default 0: in the server process)",
    )
    dense = p.add_argument_group("dense index options")
    dense.add_argument("--device", help="query encoder device, e.g. cpu, cuda:0 (default: sentence-transformers')")
    dense.add_argument(
        "--encoder-dtype",
        help="query encoder precision: float32 (default), bfloat16 (CPU), float16, auto (float16 on a GPU, float32 "
        "elsewhere)",
    )
    dense.add_argument("--cpu-index", action="store_true", help="keep the faiss index on the CPU when GPUs exist")
    dense.add_argument("--shard", action="store_true", help="split the faiss index across GPUs instead of copying it")
    dense.add_argument("--gpu-fp16", action="store_true", help="store the index's vectors on GPUs in float16")
    dense.add_argument("--nprobe", type=int, help="IVF lists searched per query (default 32)")
    dense.add_argument("--ef-search", type=int, help="HNSW search breadth (default 64)")
    p.add_argument(
        "--token-env",
        default="RESEARCH_PLUGIN_TOKEN",
        help="environment variable holding a bearer token; when set, requests must carry it",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Serve an index over HTTP (Search-R1 and FlashRAG APIs) with cross-request batching and a result cache."""
    import logging
    import os
    from functools import partial
    from pathlib import Path

    import uvicorn

    from ..retrieval import build_retriever, retriever_spec
    from ..retrieval.server import create_app

    # torch and faiss each bring an OpenMP runtime whose idle threads spin, taking the cores that the other library
    # and the event loop need (bench/retrieval, dense on 2 cores: 32 -> 50 q/s at one client); let them sleep.
    # Set before the index loads (the first import of torch or faiss reads it); a value in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    index = Path(args.index)
    try:
        if args.index.startswith(("http://", "https://")):
            raise ValueError(f"--index must be 'two_hop', a jsonl corpus or an index folder, not {args.index!r}")
        spec = retriever_spec(args.index)
        if isinstance(spec, dict) and spec["type"] == "lucene":
            from ..retrieval.lucene import start_pyserini

            start_pyserini()  # fail here, naming what to install, rather than in the server's loader
            if args.corpus:
                spec["corpus"] = args.corpus
        elif args.corpus:
            raise ValueError("--corpus applies to a Lucene index that stores no document text")
        dense = dense_options(args)
        if dense:
            if not (isinstance(spec, dict) and spec["type"] == "dense"):
                raise ValueError(
                    f"dense index options (--device, --encoder-dtype, ...) apply to a dense index, not {index}"
                )
            spec.update(dense)
        app = create_app(
            partial(build_retriever, spec),
            index_id=args.index if spec == "two_hop" or args.index.lstrip().startswith("{") else str(index.resolve()),
            max_batch=args.max_batch,
            batch_window_ms=args.batch_window_ms,
            max_queue=args.max_queue,
            cache_size=args.cache_size,
            max_topk=args.max_topk,
            max_queries=args.max_queries,
            token=os.environ.get(args.token_env) or None,
            search_processes=args.search_processes,
        )
    except (OSError, ValueError, ImportError) as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


DENSE_SERVE_OPTIONS = ("device", "encoder_dtype", "nprobe", "ef_search")


def dense_options(args) -> dict:
    """The dense-index options given on the ``serve`` command line, as ``DenseRetriever`` keyword arguments."""
    options = {name: getattr(args, name) for name in DENSE_SERVE_OPTIONS if getattr(args, name) is not None}
    if args.cpu_index:
        options["gpu"] = False
    if args.shard:
        options["shard"] = True
    if args.gpu_fp16:
        options["gpu_fp16"] = True
    return options
