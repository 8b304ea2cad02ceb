"""``research-plugin prepare``: read sources, drop bad rows (reported), filter, sample or mix, write verl parquet."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.dialects import get_dialect
from ..core.papers import PAPERS
from ..core.rewards import SCHEMES
from .formats import FORMATS, BadRow, QAExample, detect_format, parse
from .readers import Unreadable, read_records
from .rows import TEMPLATES, build_row, write_parquet
from .selection import drop_known, question_key, select

LISTED_BAD_ROWS = 20
"""Bad rows printed per source; all are counted."""


class PrepareError(ValueError):
    """The command cannot produce the file it was asked for; nothing was written."""


@dataclass(frozen=True)
class Source:
    name: str
    """The rows' ``data_source``."""
    path: Path
    weight: float | None = None


@dataclass
class SourceReport:
    name: str
    path: str
    format: str = ""
    records: int = 0
    bad: int = 0
    unanswerable: int = 0
    """Dropped by ``answerable_only``."""
    in_eval: int = 0
    """Dropped because the question is in a ``dedupe_against`` file."""
    rows: int = 0
    """Written."""
    bad_rows: list[str] = field(default_factory=list, repr=False)
    """The first :data:`LISTED_BAD_ROWS` bad rows, as ``location: reason``."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def load_source(source: Source, fmt: str | None = None) -> tuple[list[QAExample], SourceReport]:
    """Every good example of ``source`` (ids filled in), and what was read; bad rows are counted, not raised."""
    report = SourceReport(source.name, str(source.path), fmt or "")
    examples: list[QAExample] = []
    pending: list[tuple[int, str, Any]] = []  # records read before the format is known

    def take(n: int, location: str, record: Any) -> None:
        try:
            if isinstance(record, Unreadable):
                raise BadRow(record.reason)
            ex = parse(record, report.format)
        except BadRow as e:
            report.bad += 1
            if len(report.bad_rows) < LISTED_BAD_ROWS:
                report.bad_rows.append(f"{location}: {e}")
            return
        examples.append(ex if ex.id is not None else dataclasses.replace(ex, id=f"{source.name}-{n}"))

    for n, (location, record) in enumerate(read_records(source.path), 1):
        report.records += 1
        if not report.format:
            report.format = detect_format(record) or ""
            if not report.format:
                pending.append((n, location, record))
                continue
            for args in pending:
                take(*args)
            pending.clear()
        take(n, location, record)
    if pending:
        raise PrepareError(f"{source.path}: cannot tell its format from its records; pass --format")
    return examples, report


def bad_limit(spec: str | int, records: int) -> int:
    """Allowed bad rows: a count (``"10"``) or a percentage of the records read (``"0.5%"``)."""
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1]) / 100
            if not 0 <= share <= 1:
                raise ValueError
            return math.floor(share * records)
        count = int(text)
        if count < 0:
            raise ValueError
        return count
    except ValueError:
        raise PrepareError(f"--max-bad must be a count or a percentage such as 1%, not {spec!r}") from None


def prepare(
    sources: Sequence[Source],
    out: Path,
    *,
    split: str = "train",
    dialect: str = "research",
    template: str = "instruct",
    opens_think: bool | None = None,
    scheme: str | None = None,
    fmt: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    answerable_only: bool = False,
    dedupe_against: Sequence[Path] = (),
    max_bad: str | int = "0",
    warn: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Write ``out`` (verl parquet) from ``sources``; returns a report. Raises :class:`PrepareError` and writes
    nothing when the sources are unreadable, too many rows are bad, or the options cannot be met.

    ``opens_think``: the prompts open the think block (R1-Searcher's do); default: the dialect's paper's choice."""
    get_dialect(dialect)
    scheme = scheme or PAPERS[dialect].default_scheme
    if scheme not in SCHEMES:
        raise PrepareError(f"unknown reward scheme {scheme!r}; known: {sorted(SCHEMES)}")
    if template not in TEMPLATES:
        raise PrepareError(f"--template must be one of {list(TEMPLATES)}, not {template!r}")
    if fmt is not None and fmt not in FORMATS:
        raise PrepareError(f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    if not sources:
        raise PrepareError("no input given")
    if sample is not None and sample <= 0:
        raise PrepareError(f"--sample must be positive, not {sample}")
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not (all(weighted) and len(sources) > 1):
        raise PrepareError("weights mix several inputs: give every input a weight, and at least two inputs")

    known: set[str] = set()
    for path in dedupe_against:
        evals, report = load_source(Source("eval", Path(path)))
        if report.bad:
            warn(f"{path}: {report.bad} bad rows ignored for --dedupe-against")
        known.update(question_key(ex.question) for ex in evals)

    pools, reports = [], []
    for source in sources:
        examples, report = load_source(source, fmt)
        for line in report.bad_rows:
            warn(f"{source.path} {line}")
        if report.bad > len(report.bad_rows):
            warn(f"{source.path}: ... {report.bad - len(report.bad_rows)} more bad rows")
        if answerable_only:
            kept = [ex for ex in examples if ex.answerable]
            report.unanswerable, examples = len(examples) - len(kept), kept
        if known:
            kept = drop_known(examples, known)
            report.in_eval, examples = len(examples) - len(kept), kept
        pools.append(examples)
        reports.append(report)

    records, bad = sum(r.records for r in reports), sum(r.bad for r in reports)
    limit = bad_limit(max_bad, records)
    if bad > limit:
        raise PrepareError(
            f"{bad} of {records} rows are bad (allowed: {limit}, --max-bad {max_bad}); {out} was not written"
        )
    try:
        chosen = select(pools, weights=[s.weight for s in sources] if any(weighted) else None, sample=sample, seed=seed)
    except ValueError as e:
        raise PrepareError(str(e)) from None

    rows: list[dict[str, Any]] = []
    if opens_think is None:
        opens_think = PAPERS[dialect].opens_think
    opts = dict(split=split, dialect=dialect, scheme=scheme, template=template, opens_think=opens_think)
    for source, report, examples in zip(sources, reports, chosen):
        report.rows = len(examples)
        rows += [build_row(ex, data_source=source.name, index=len(rows) + i, **opts) for i, ex in enumerate(examples)]
    if not rows:
        raise PrepareError(f"no rows left to write; {out} was not written")
    write_parquet(rows, out)
    return {
        "out": str(out),
        "rows": len(rows),
        "bad": bad,
        "sources": [{k: v for k, v in dataclasses.asdict(r).items() if k != "bad_rows"} for r in reports],
    }
