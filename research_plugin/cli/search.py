"""``research-plugin search``: run one query against a retriever and print the result block the policy would see."""

from __future__ import annotations

import asyncio
import sys

from ..core.dialects import DIALECTS


def register(sub) -> None:
    p = sub.add_parser("search", help="query a retriever and print the result block")
    p.add_argument("query", nargs="+")
    p.add_argument(
        "--retriever",
        default="two_hop",
        help="'two_hop' (bundled corpus, BM25), a /retrieve URL, a jsonl corpus, an index folder or a JSON spec",
    )
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--dialect", choices=sorted(DIALECTS), default="research")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run one query against a retriever and print the result block the policy would see."""
    from ..core.dialects import format_passages, get_dialect, result_block
    from ..retrieval import get_retriever, retriever_spec

    try:
        spec = retriever_spec(args.retriever)
    except ValueError as e:
        print(f"search: {e}", file=sys.stderr)
        return 2

    async def go():
        retriever = get_retriever(spec)
        try:
            return (await retriever.search([" ".join(args.query)], args.top_k))[0]
        finally:
            await retriever.close()

    result = asyncio.run(go())
    if result.error:
        print(f"search failed: {result.error}", file=sys.stderr)
        return 1
    d = get_dialect(args.dialect)
    print(result_block(format_passages(result.passages, d), d).strip())
    return 0
