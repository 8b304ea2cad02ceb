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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
