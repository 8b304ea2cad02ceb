"""Per-row scores of an evaluated trajectory, their per-benchmark means, and the papers' results table."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..answer_metrics import cover_exact_match, exact_match, f1_score
from ..dialects import extract_answer, get_dialect, strip_results
from ..format_check import check_format

MEANS = (
    "em",
    "f1",
    "cover_em",
    "lj",
    "reward",
    "format",
    "num_searches",
    "num_failed_searches",
    "retrieval_recall",
    "response_tokens",
    "generated_tokens",
    "retrieved_tokens",
)
"""Row metrics averaged per benchmark (``lj`` over the rows the judge answered)."""

TABLE_ROWS = (
    ("EM", "em", 100, 1),
    ("F1", "f1", 100, 1),
    ("Cover-EM", "cover_em", 100, 1),
    ("LJ", "lj", 100, 1),
    ("Searches / question", "num_searches", 1, 2),
    ("Response tokens", "response_tokens", 1, 0),
    ("Retrieval recall", "retrieval_recall", 100, 1),
    ("Malformed %", "malformed", 100, 1),
)
"""(label, summary key, scale, decimals) of the markdown table's rows."""


def prediction_of(response: str, dialect: str) -> str | None:
    """The final answer the policy wrote (result blocks ignored), as the rewards read it; None when absent."""
    d = get_dialect(dialect)
    return extract_answer(strip_results(response, d), d)


def answer_scores(prediction: str | None, golds: Sequence[str], punct: str = "remove") -> dict[str, float]:
    """EM, F1 and cover-EM of ``prediction`` against the best gold answer (official normalisation by default)."""
    return {
        "em": exact_match(prediction, golds, punct),
        "f1": f1_score(prediction, golds, punct),
        "cover_em": cover_exact_match(prediction, golds, punct),
    }


def retrieval_recall(retrieved: Iterable[str], golds: Sequence[str], punct: str = "remove") -> float:
    """1.0 when some retrieved passage contains a gold answer (normalised, on token boundaries), else 0.0."""
    return float(any(cover_exact_match(text, golds, punct) for text in retrieved))


def format_report(response: str, dialect: str) -> tuple[bool, str | None]:
    report = check_format(response, dialect)
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


def markdown_table(per_source: Mapping[str, Mapping[str, Any]]) -> str:
    """Benchmarks as columns (plus their average when there are several), metrics as rows, like the papers."""
    columns = dict(per_source)
    if len(columns) > 1:
        columns["Average"] = macro_average(per_source)
    header = ["Metric", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for label, key, scale, decimals in TABLE_ROWS:
        cells = [label]
        for stats in columns.values():
            value = stats.get(key)
            cells.append("–" if value is None else f"{value * scale:.{decimals}f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| Questions | " + " | ".join(str(s["rows"]) for s in columns.values()) + " |")
    return "\n".join(lines) + "\n"
