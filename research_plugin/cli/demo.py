"""``research-plugin demo``: roll out search-agent trajectories with rewards through verl's agent loop, on CPU."""

from __future__ import annotations

import sys

from ..core.dialects import DIALECTS
from ..core.rewards import SCHEMES


def register(sub) -> None:
    p = sub.add_parser("demo", help="search-agent rollouts + rewards through verl's agent loop, on CPU")
    p.add_argument("-n", type=int, default=4, help="number of bundled questions")
    p.add_argument(
        "--questions",
        choices=("facts", "two_hop"),
        default="facts",
        help="the fact world's held-out questions (the main job's task) or the bundled two-hop ones",
    )
    p.add_argument(
        "--model",
        help="a local HF model folder or a training run's checkpoint folder (default: the embedded default's policy)",
    )
    p.add_argument("--dialect", choices=sorted(DIALECTS), help="default: the run's, else research")
    p.add_argument("--scheme", choices=sorted(SCHEMES), help="default: the run's, else research")
    p.add_argument("--response-length", type=int, help="default: the run's, else 256")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.demo import run_demo

    try:
        run_demo(
            n=args.n,
            model=args.model,
            dialect=args.dialect,
            scheme=args.scheme,
            response_length=args.response_length,
            temperature=args.temperature,
            seed=args.seed,
            questions=args.questions,
        )
    except ValueError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    return 0
