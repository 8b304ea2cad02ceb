"""``research-plugin plot``: draw training-dynamics PNGs from verl's console, file-logger or tensorboard logs."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("plot", help="PNGs of reward, response length and searches over training steps")
    p.add_argument(
        "--log", nargs="+", required=True, help="verl console logs, file-logger jsonl, tensorboard dirs, or folders"
    )
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.set_defaults(func=run)


def run(args) -> int:
    """Draw training-dynamics PNGs from verl's console, file-logger or tensorboard logs."""
    from ..dynamics.plots import plot_training

    try:
        drawn = plot_training(args.log, args.out)
    except OSError as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    return 0 if drawn else 1
