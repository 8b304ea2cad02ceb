"""``research-plugin prepare``: turn QA datasets (FlashRAG, MuSiQue, HotpotQA, 2Wiki, Bamboogle, R1-Searcher) into
verl parquet rows."""

from __future__ import annotations

import argparse
import sys

from ..core.dialects import DIALECTS
from ..core.rewards import SCHEMES
from ..prepare.formats import FORMATS
from ..prepare.rows import TEMPLATES


def register(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn a QA dataset (or a weighted mix of several) into verl parquet rows for the search agent",
        description="Every input row becomes one output row unless an option filters it; bad rows are reported "
        "with their line and counted, and nothing is written when more than --max-bad are bad.",
    )
    p.add_argument("dataset", help="dataset name: the rows' data_source (for inputs given without NAME=)")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="input file (jsonl, JSON array, csv/tsv, parquet); repeat to combine several; NAME= sets data_source",
    )
    p.add_argument("--out", required=True, help="parquet file to write (replaced atomically)")
    p.add_argument("--split", default="train", help="recorded in extra_info.split")
    p.add_argument("--dialect", choices=sorted(DIALECTS), default="research")
    p.add_argument("--template", choices=TEMPLATES, default="instruct", help="instruct: chat messages; base: raw text")
    p.add_argument(
        "--open-think",
        action=argparse.BooleanOptionalAction,
        help="end prompts with the think open tag, so responses start inside a think block "
        "(default: as the dialect's paper does: yes for r1_searcher, no otherwise)",
    )
    p.add_argument("--scheme", choices=sorted(SCHEMES), help="reward scheme recorded in rows (default: the dialect's)")
    p.add_argument("--format", choices=sorted(FORMATS), help="record format (default: detected from the file)")
    p.add_argument("--sample", type=int, metavar="N", help="keep N rows (all inputs together), drawn with --seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--weight",
        action="append",
        metavar="NAME=W",
        help="mix named inputs in these proportions (of --sample rows, or as many as the inputs allow)",
    )
    p.add_argument("--answerable-only", action="store_true", help="drop rows marked answerable: false (MuSiQue)")
    p.add_argument(
        "--dedupe-against", action="append", metavar="EVAL", help="drop questions that appear in this eval file"
    )
    p.add_argument("--max-bad", default="0", help="bad rows allowed: a count or a percentage such as 1%% (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Turn QA datasets (FlashRAG, MuSiQue, HotpotQA, 2Wiki, Bamboogle, R1-Searcher) into verl parquet rows."""
    import json
    from pathlib import Path

    from ..core.settings import convert
    from ..prepare import PrepareError, Source, prepare

    named = [_named_input(spec, args.dataset) for spec in args.input]
    weights = {}
    try:
        for spec in args.weight or []:
            name, sep, value = spec.partition("=")
            if not sep:
                raise PrepareError(f"--weight must be NAME=WEIGHT, not {spec!r}")
            weights[name] = convert(value, float, f"--weight {name}", "command line")
        names = [name for name, _ in named]
        if weights and (set(weights) != set(names) or len(set(names)) != len(names)):
            raise PrepareError(f"--weight needs one weight per input name; inputs: {names}, weights: {sorted(weights)}")
        report = prepare(
            [Source(name, Path(path), weights.get(name)) for name, path in named],
            Path(args.out),
            split=args.split,
            dialect=args.dialect,
            template=args.template,
            opens_think=args.open_think,
            scheme=args.scheme,
            fmt=args.format,
            sample=args.sample,
            seed=args.seed,
            answerable_only=args.answerable_only,
            dedupe_against=[Path(p) for p in args.dedupe_against or []],
            max_bad=args.max_bad,
        )
    except (OSError, ValueError) as e:
        print(f"prepare: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


def _named_input(spec: str, default_name: str) -> tuple[str, str]:
    """``NAME=PATH`` or ``PATH`` (named ``default_name``); a path that exists as written is never split."""
    from pathlib import Path

    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, path
    return default_name, spec
