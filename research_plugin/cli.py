"""``research-plugin`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys


def cmd_doctor(args) -> int:
    """Import verl as a training process would and report what our plugin registered."""
    import verl
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    registered = set(_agent_loop_registry)  # before the import below, which would register us itself
    from .verl_plugin import REGISTERED_AGENT_LOOPS

    print(f"verl {verl.__version__}")
    missing = [name for name in REGISTERED_AGENT_LOOPS if name not in registered]
    for name in REGISTERED_AGENT_LOOPS:
        print(f"agent loop {name}: {'registered' if name not in missing else 'MISSING'}")
    if missing:
        print("the verl.plugins entry point did not load; try: python -c 'import research_plugin.verl_plugin'")
    return 1 if missing else 0


def cmd_search(args) -> int:
    """Run one query against a retriever and print the result block the policy would see."""
    from .dialects import format_passages, get_dialect, result_block
    from .retrieval import get_retriever

    async def go():
        retriever = get_retriever(args.retriever)
        try:
            return (await retriever.search([" ".join(args.query)], args.top_k))[0]
        finally:
            await retriever.close()

    result = asyncio.run(go())
    if result.error:
        print(f"search failed: {result.error}", file=sys.stderr)
        return 1
    print(result_block(format_passages(result.passages), get_dialect(args.dialect)).strip())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(
        n=args.n,
        model=args.model,
        dialect=args.dialect,
        scheme=args.scheme,
        response_length=args.response_length,
        temperature=args.temperature,
        seed=args.seed,
    )
    return 0


def cmd_serve(args) -> int:
    """Serve an index over HTTP (Search-R1 and FlashRAG APIs) with cross-request batching and a result cache."""
    import json
    import logging
    import os
    from functools import partial
    from pathlib import Path

    import uvicorn

    from .retrieval import build_retriever
    from .retrieval.server import create_app

    index = Path(args.index)
    try:
        if index.is_dir():  # a saved index: its manifest names the backend that loads it
            backend = json.loads((index / "manifest.json").read_text()).get("backend", "bm25")
            spec: dict | str = {"type": backend, "index_dir": str(index)}
        elif index.is_file():
            spec = {"type": "bm25", "corpus": str(index)}
        elif args.index == "demo":
            spec = "demo"
        else:
            raise ValueError(f"--index must be 'demo', a jsonl corpus or an index folder, not {args.index!r}")
        app = create_app(
            partial(build_retriever, spec),
            index_id="demo" if spec == "demo" else str(index.resolve()),
            max_batch=args.max_batch,
            batch_window_ms=args.batch_window_ms,
            max_queue=args.max_queue,
            cache_size=args.cache_size,
            max_topk=args.max_topk,
            max_queries=args.max_queries,
            token=os.environ.get(args.token_env) or None,
        )
    except (OSError, ValueError) as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def cmd_index_build(args) -> int:
    """Build a BM25 or dense index folder from a jsonl corpus; print its manifest."""
    import json

    from .retrieval.index_builder import build_index

    try:
        manifest = build_index(
            args.corpus,
            args.out,
            backend=args.backend,
            encoder=args.encoder,
            index_type=args.index_type,
            fp16=args.fp16,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
        )
    except (OSError, ValueError) as e:
        print(f"index build: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=1, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .dialects import DIALECTS

    parser = argparse.ArgumentParser(prog="research-plugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check that `import verl` registers the plugin")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("search", help="query a retriever and print the result block")
    p.add_argument("query", nargs="+")
    p.add_argument("--retriever", default="demo", help="'demo' (bundled corpus, BM25) or a /retrieve URL")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--dialect", choices=sorted(DIALECTS), default="research")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("demo", help="search-agent rollouts + rewards through verl's agent loop, on CPU")
    p.add_argument("-n", type=int, default=4, help="number of bundled questions")
    p.add_argument("--model", help="local HF model directory (default: a tiny random Qwen2 built locally)")
    p.add_argument("--dialect", choices=sorted(DIALECTS), default="research")
    p.add_argument("--scheme", default="research")
    p.add_argument("--response-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve a retrieval index over HTTP (Search-R1 /retrieve, FlashRAG /search)")
    p.add_argument("--index", default="demo", help="'demo', a jsonl corpus (BM25), or a saved index folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64, help="most queries per backend call")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=0.0,
        help="extra wait for more queries before a batch (default 0: batch what arrived while the backend was busy)",
    )
    p.add_argument("--max-queue", type=int, default=1024, help="queued queries before requests get 429")
    p.add_argument("--cache-size", type=int, default=100_000, help="cached results (0 disables the cache)")
    p.add_argument("--max-topk", type=int, default=100)
    p.add_argument("--max-queries", type=int, default=512, help="most queries in one request")
    p.add_argument(
        "--token-env",
        default="RESEARCH_PLUGIN_TOKEN",
        help="environment variable holding a bearer token; when set, requests must carry it",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="build retrieval indexes")
    index_sub = p.add_subparsers(dest="index_command", required=True)
    p = index_sub.add_parser("build", help="build a BM25 or dense (faiss) index folder from a jsonl corpus")
    p.add_argument("--corpus", required=True, help="'demo' or a jsonl corpus ({id, contents} or {id, title, text})")
    p.add_argument("--backend", choices=["bm25", "dense"], default="bm25")
    p.add_argument("--out", required=True, help="index folder to create (replaces an older index there)")
    p.add_argument("--encoder", default="minilm", help="'minilm' (bundled) or a sentence-transformers path / name")
    p.add_argument("--index-type", default="Flat", help="faiss index_factory string: Flat, HNSW32, IVF1024,PQ48, ...")
    p.add_argument("--batch-size", type=int, default=256, help="passages per encoder batch")
    p.add_argument("--shard-size", type=int, default=50_000, help="passages per resumable embedding shard")
    p.add_argument("--fp16", action="store_true", help="store vectors in fp16 (Flat, HNSW, IVF...,Flat)")
    p.set_defaults(func=cmd_index_build)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
