"""Reward schemes of ReSearch, R1-Searcher and Search-R1, and verl's ``custom_reward_function`` entry point.

A scheme is a function from a :class:`Graded` response to a float; add one by writing the function and
registering it in :data:`SCHEMES` with its natural dialect and answer normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .answer_metrics import as_gold_list, cover_exact_match, exact_match, f1_score
from .dialects import Dialect, extract_answer, get_dialect, strip_results
from .format_check import check_format

NORMALIZATIONS = {"squad": "remove", "space": "space"}
"""``normalization`` option → ``punct`` argument of :func:`answer_metrics.normalize_answer`."""
METRICS = ("f1", "em", "cover_em")
PASSTHROUGH = ("num_failed_searches", "retrieved_tokens", "retrieval_s")
"""Numbers the agent loop records in ``extra_info`` that are logged as they are (0 when absent)."""


@dataclass(frozen=True)
class Graded:
    """One response, graded: what every scheme may look at, plus the scheme options."""

    format_ok: bool
    num_searches: int
    f1: float
    em: float
    cover_em: float
    metric: str = "f1"
    format_penalty: float = 2.0

    @property
    def answer_score(self) -> float:
        return getattr(self, self.metric)


def research(g: Graded) -> float:
    """ReSearch: 0 for a wrong format, else the answer's F1, or 0.1 when that F1 is 0."""
    if not g.format_ok:
        return 0.0
    return g.f1 if g.f1 > 0 else 0.1


def r1_stage1(g: Graded) -> float:
    """R1-Searcher stage 1: 0.5 for searching at least once + 0.5 for a right format."""
    return 0.5 * (g.num_searches > 0) + 0.5 * g.format_ok


def r1_stage2(g: Graded) -> float:
    """R1-Searcher stage 2: the answer metric, minus ``format_penalty`` for a wrong format."""
    return g.answer_score - (0.0 if g.format_ok else g.format_penalty)


def search_r1_em(g: Graded) -> float:
    """Search-R1: exact match of the answer; the format is not checked."""
    return g.em


@dataclass(frozen=True)
class Scheme:
    score: Callable[[Graded], float]
    dialect: str
    normalization: str = "squad"


SCHEMES: dict[str, Scheme] = {
    "research": Scheme(research, "research"),
    "r1_stage1": Scheme(r1_stage1, "r1_searcher", "space"),
    "r1_stage2": Scheme(r1_stage2, "r1_searcher", "space"),
    "search_r1_em": Scheme(search_r1_em, "search_r1"),
}


def _number(extra_info: dict, key: str) -> float | None:
    """``extra_info[key]`` as a finite float, or None."""
    try:
        x = float(extra_info[key])
    except (KeyError, TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def compute_score(
    data_source: Any,
    solution_str: Any,
    ground_truth: Any,
    extra_info: dict | None = None,
    scheme: str = "research",
    dialect: str | Dialect | None = None,
    metric: str = "f1",
    format_penalty: float = 2.0,
    normalization: str | None = None,
    **_verl_kwargs: Any,
) -> dict[str, float]:
    """Score one response for verl; every value of the returned dict is a number.

    Dialect: ``dialect`` > ``extra_info["dialect"]`` > the scheme's own. ``normalization`` ("squad" or
    "space") defaults to the scheme's. Other keyword arguments verl may pass are ignored.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reward scheme {scheme!r}; known: {sorted(SCHEMES)}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {list(METRICS)}")
    if normalization not in (None, *NORMALIZATIONS):
        raise ValueError(f"unknown normalization {normalization!r}; known: {sorted(NORMALIZATIONS)}")
    sch = SCHEMES[scheme]
    extra_info = extra_info if isinstance(extra_info, dict) else {}
    d = get_dialect(dialect or extra_info.get("dialect") or sch.dialect)
    punct = NORMALIZATIONS[normalization or sch.normalization]
    text = solution_str if isinstance(solution_str, str) else ""
    golds = as_gold_list(ground_truth)

    own_text = strip_results(text, d)  # retrieved text must not supply the answer or count as queries
    answer = extract_answer(own_text, d)
    searches = _number(extra_info, "num_searches")
    num_searches = int(searches) if searches is not None else own_text.count(d.query_close)
    g = Graded(
        format_ok=check_format(text, d).ok,
        num_searches=num_searches,
        f1=f1_score(answer, golds, punct),
        em=exact_match(answer, golds, punct),
        cover_em=cover_exact_match(answer, golds, punct),
        metric=metric,
        format_penalty=float(format_penalty),
    )
    return {
        "score": float(sch.score(g)),
        "f1": g.f1,
        "em": g.em,
        "cover_em": g.cover_em,
        "format": float(g.format_ok),
        "num_searches": g.num_searches,
        **{k: _number(extra_info, k) or 0.0 for k in PASSTHROUGH},
    }
