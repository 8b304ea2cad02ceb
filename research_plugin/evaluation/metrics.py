"""Per-row scores of an evaluated trajectory, their per-benchmark means, and the papers' results table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..core.answer_metrics import as_gold_list, cover_exact_match
from ..core.dialects import get_dialect
from ..core.format_check import FormatReport
from ..core.rewards import METRICS, read_response, retrieval_hit, scheme_options
from .protocols import PROTOCOLS

MEANS = (
    "em",
    "f1",
    "cover_em",
    "acc_r",
    "subem",
    "lj",
    "reward",
    "format",
    "num_searches",
    "num_failed_searches",
    "retrieval_recall",
    "retrieval_hit",
    "response_tokens",
    "generated_tokens",
    "retrieved_tokens",
)
"""Row metrics averaged per benchmark (``lj`` over the rows the judge answered)."""


def read_as_reward(
    response: str, dialect: str, scheme: str, *, opens_think: bool = False, ended_by_eos: bool = True, **options: Any
) -> tuple[str | None, FormatReport]:
    """The answer and the format of ``response`` exactly as ``scheme``'s reward reads them, with its default options
    or ``options`` (``format_check``, ``require_think``, ``boxed_fallback``, ``forbid_cjk``, ``require_eos``, ...):
    the same function, :func:`~research_plugin.core.rewards.read_response`, so eval's ``format`` is the reward's."""
    d = get_dialect(dialect)
    o = scheme_options(scheme, where="eval's reward options", **options)
    answer, report = read_response(response, scheme, d, o, opens_think=opens_think)
    if report.ok and o.require_eos and not ended_by_eos:
        report = FormatReport(False, "did not end with EOS", report.num_queries)
    return answer, report


def prediction_of(response: str, dialect: str, scheme: str, **options: Any) -> str | None:
    """The final answer the policy wrote (result blocks ignored), as ``scheme``'s reward reads it; None when absent."""
    return read_as_reward(response, dialect, scheme, **options)[0]


def answer_scores(prediction: str | None, golds: Sequence[str], normalization: str = "squad") -> dict[str, float]:
    """Every answer metric (EM, F1, cover-EM, ACC_R, sub-EM) of ``prediction`` against the best gold answer."""
    return {name: fn(prediction, golds, normalization) for name, fn in METRICS.items()}


def retrieval_recall(retrieved: Iterable[str], golds: Sequence[str], normalization: str = "squad") -> float:
    """1.0 when some retrieved passage contains a gold answer (normalised, on token boundaries: "1999" is not in
    "19999"), else 0.0. Eval's own measure; the reward's :func:`retrieval_hit` (Search-R1's substring test over the
    result blocks) is reported beside it under its own name."""
    return float(any(cover_exact_match(text, golds, normalization) for text in retrieved))


def reward_retrieval_hit(response: str, dialect: str, golds: Sequence[str], normalization: str = "squad") -> float:
    """The reward's ``retrieval_hit`` of ``response``: some result block contains a gold answer as a normalised
    substring, even inside a word (:func:`~research_plugin.core.rewards.retrieval_hit`, Search-R1's
    ``is_retrieval_correct``)."""
    return float(retrieval_hit(response, get_dialect(dialect), as_gold_list(golds), normalization))


def format_report(
    response: str, dialect: str, scheme: str, *, opens_think: bool = False, ended_by_eos: bool = True, **options: Any
) -> tuple[bool, str | None]:
    """Whether ``response`` is well formed as ``scheme``'s reward checks it (:func:`read_as_reward`), and why not."""
    report = read_as_reward(response, dialect, scheme, opens_think=opens_think, ended_by_eos=ended_by_eos, **options)[1]
    return report.ok, report.reason


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ``data_source``: row count, the mean of each metric in :data:`MEANS`, and the malformed share.

    ``lj`` is averaged over the rows the judge answered (``lj_rows`` counts them); it is None when there are none.
    """
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["data_source"]].append(record["metrics"])
    summary = {}
    for source in sorted(groups):
        rows = groups[source]
        stats: dict[str, Any] = {"rows": len(rows)}
        for key in MEANS:
            values = [float(m[key]) for m in rows if m.get(key) is not None]
            stats[key] = sum(values) / len(values) if values else None
        stats["lj_rows"] = sum(1 for m in rows if m.get("lj") is not None)
        stats["malformed"] = None if stats["format"] is None else 1.0 - stats["format"]
        summary[source] = stats
    return summary


def macro_average(per_source: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The unweighted mean over benchmarks of each metric (over the benchmarks that have it)."""
    out: dict[str, Any] = {"rows": sum(s["rows"] for s in per_source.values())}
    for key in (*MEANS, "malformed"):
        values = [s[key] for s in per_source.values() if s.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def markdown_table(per_source: Mapping[str, Mapping[str, Any]], protocol: str = "research") -> str:
    """Benchmarks as columns (plus their average when there are several), the ``protocol``'s metrics as rows under
    its paper's names, like the papers."""
    columns = dict(per_source)
    if len(columns) > 1:
        columns["Average"] = macro_average(per_source)
    header = ["Metric", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for label, key, scale, decimals in PROTOCOLS[protocol].table_rows():
        cells = [label]
        for stats in columns.values():
            value = stats.get(key)
            cells.append("–" if value is None else f"{value * scale:.{decimals}f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| Questions | " + " | ".join(str(s["rows"]) for s in columns.values()) + " |")
    return "\n".join(lines) + "\n"
