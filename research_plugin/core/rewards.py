"""Reward schemes of ReSearch, R1-Searcher and Search-R1, and verl's ``custom_reward_function`` entry point.

A scheme is a function from a :class:`Graded` response to a float, with its dialect and its defaults for the
options of :func:`compute_score`; add one by writing the function and registering it in :data:`SCHEMES`.

Where the authors' released code is a defensible reading of their paper, a scheme's defaults follow the code (it
produced their numbers); where it is a flaw (answers or tags read out of retrieved passages, a retrieved document
containing the word "assistant" costing a penalty, a 10-word cap on answers), the scheme does not copy it. The
README has one table per paper: each behaviour of the original code, the option that gives it, and the default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .answer_metrics import (
    NORMALIZATIONS,
    as_gold_list,
    cover_exact_match,
    exact_match,
    f1_score,
    substring_exact_match,
    token_cover_match,
)
from .dialects import Dialect, extract_answer, get_dialect, strip_results
from .format_check import check_format, check_search_r1_sequence

METRICS: dict[str, Callable[[str | None, Any, str], float]] = {
    "f1": f1_score,
    "em": exact_match,
    "cover_em": cover_exact_match,
    "acc_r": token_cover_match,
    "subem": substring_exact_match,
}
"""Answer metrics by name (see :mod:`.answer_metrics`); every one is reported, ``metric`` picks the rewarded one."""
PASSTHROUGH = ("num_failed_searches", "retrieved_tokens", "retrieval_s")
"""Numbers the agent loop records in ``extra_info`` that are logged as they are (0 when absent)."""


@dataclass(frozen=True)
class Options:
    """What :func:`compute_score` takes besides the response; ``None`` means "the scheme's default"."""

    metric: str = "f1"
    """The answer metric a scheme rewards (``f1``, ``em``, ``cover_em``, ``acc_r``, ``subem``)."""
    normalization: str = "squad"
    """Answer normalisation: ``squad``, ``space`` or ``r1_searcher`` (see :mod:`.answer_metrics`)."""
    require_eos: bool = False
    """A response that did not end with EOS (ran out of budget, was aborted) fails the format (ReSearch's code)."""
    require_think: bool = False
    """The format needs at least one closed think block (ReSearch's code)."""
    boxed_fallback: bool = True
    """When the last ``\\boxed{`` is unclosed, take an earlier box; False fails the format (ReSearch's code)."""
    opens_think: bool | None = None
    """The prompt ended with the think open tag (R1-Searcher's prompts); ``None``: ``extra_info["opens_think"]``."""
    format_penalty: float = 2.0
    """R1-Searcher stage 2: subtracted from the answer metric when the format is wrong."""
    answer_reward: bool = False
    """R1-Searcher stage 1: add +1 for a covered answer (``metric``) and -1 otherwise, as its stage-1 code does."""
    structure_format_score: float = 0.2
    """Search-R1 format reward (lambda_s): a valid sequence with a wrong answer; 1 - lambda_s for a right one in
    an invalid sequence."""
    final_format_score: float = 0.1
    """Search-R1 format reward (lambda_f): a wrong answer in an invalid sequence."""
    retrieval_score: float = 0.0
    """Search-R1 format reward (lambda_r): added to lambda_s when a retrieved block contains a gold answer."""


OPTION_NAMES = frozenset(f.name for f in fields(Options))


@dataclass(frozen=True)
class Graded:
    """One response, graded: what every scheme may look at, plus the options."""

    format_ok: bool
    num_searches: int
    answered: bool
    metrics: dict[str, float]
    options: Options
    retrieval_hit: bool = False
    """Some result block contains a gold answer (normalised substring, as Search-R1's ``is_retrieval_correct``)."""

    @property
    def answer_score(self) -> float:
        return self.metrics[self.options.metric]


def research(g: Graded) -> float:
    """ReSearch: 0 for a wrong format, else the answer's F1, or 0.1 when that F1 is 0."""
    if not g.format_ok:
        return 0.0
    return g.answer_score if g.answer_score > 0 else 0.1


def r1_stage1(g: Graded) -> float:
    """R1-Searcher stage 1: 0.5 for searching at least once + 0.5 for a right format (+1 / -1 with answer_reward).

    That is the paper's form; ``answer_reward`` adds its stage-1 code's +1 / -1 for a covered / missed answer.
    """
    score = 0.5 * (g.num_searches > 0) + 0.5 * g.format_ok
    if g.options.answer_reward:
        score += 1.0 if g.answered and g.answer_score > 0 else -1.0
    return score


def r1_stage2(g: Graded) -> float:
    """R1-Searcher stage 2: the answer metric, minus ``format_penalty`` for a wrong format."""
    return g.answer_score - (0.0 if g.format_ok else g.options.format_penalty)


def search_r1_em(g: Graded) -> float:
    """Search-R1: exact match of the answer (``metric="subem"``: its sub-EM); the format is not checked."""
    return g.answer_score


def search_r1_format(g: Graded) -> float:
    """Search-R1's format-shaped reward (v0.3, ``qa_em_format``): answer and sequence format, with retrieval.

    lambda_s, lambda_f and lambda_r are the options ``structure_format_score``, ``final_format_score`` and
    ``retrieval_score``:

    ============ ============================== ==============
    answer       valid sequence                 invalid
    ============ ============================== ==============
    right        1                              1 - lambda_s
    wrong        lambda_s (+ lambda_r on a hit)  lambda_f
    none         lambda_s (+ lambda_r on a hit)  0
    ============ ============================== ==============
    """
    o = g.options
    if g.answered and g.answer_score > 0:
        return 1.0 if g.format_ok else 1.0 - o.structure_format_score
    if g.format_ok:
        return o.structure_format_score + (o.retrieval_score if g.retrieval_hit else 0.0)
    return o.final_format_score if g.answered else 0.0


@dataclass(frozen=True)
class Scheme:
    score: Callable[[Graded], float]
    dialect: str
    defaults: Options = field(default_factory=Options)
    bounds: tuple[float, float] = (0.0, 1.0)
    """The lowest and highest score with the default options (property-tested)."""


SCHEMES: dict[str, Scheme] = {
    "research": Scheme(research, "research", Options(require_eos=True, require_think=True, boxed_fallback=False)),
    "r1_stage1": Scheme(r1_stage1, "r1_searcher", Options(metric="acc_r", normalization="r1_searcher")),
    "r1_stage2": Scheme(r1_stage2, "r1_searcher", Options(normalization="r1_searcher"), bounds=(-2.0, 1.0)),
    "search_r1_em": Scheme(search_r1_em, "search_r1", Options(metric="em")),
    "search_r1_format": Scheme(search_r1_format, "search_r1", Options(metric="em")),
}


def _number(extra_info: dict, key: str) -> float | None:
    """``extra_info[key]`` as a finite float, or None."""
    try:
        x = float(extra_info[key])
    except (KeyError, TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _flag(value: Any) -> bool | None:
    """A boolean a host recorded (bool, 0/1, numpy bool), or None when it recorded none."""
    if value is None or isinstance(value, str):
        return None
    try:
        return bool(value)
    except (TypeError, ValueError):
        return None


def scheme_options(scheme: str, **overrides: Any) -> Options:
    """The options of ``scheme``: its defaults, with the ``overrides`` that are not None; checked."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown reward scheme {scheme!r}; known: {sorted(SCHEMES)}")
    unknown = set(overrides) - OPTION_NAMES
    if unknown:
        raise ValueError(f"unknown reward options {sorted(unknown)}; known: {sorted(OPTION_NAMES)}")
    o = replace(SCHEMES[scheme].defaults, **{k: v for k, v in overrides.items() if v is not None})
    if o.metric not in METRICS:
        raise ValueError(f"unknown metric {o.metric!r}; known: {list(METRICS)}")
    if o.normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {o.normalization!r}; known: {list(NORMALIZATIONS)}")
    return o


def compute_score(
    data_source: Any,
    solution_str: Any,
    ground_truth: Any,
    extra_info: dict | None = None,
    scheme: str = "research",
    dialect: str | Dialect | None = None,
    eos_token: str | None = None,
    **options: Any,
) -> dict[str, float]:
    """Score one response for verl; every value of the returned dict is a number.

    Dialect: ``dialect`` > ``extra_info["dialect"]`` > the scheme's own. ``options`` are the fields of
    :class:`Options` (``metric``, ``normalization``, ``require_eos``, ...), each defaulting to the scheme's; other
    keyword arguments verl passes are ignored. Whether the response ended with EOS comes from
    ``extra_info["ended_by_eos"]`` (the agent loop records it), else from ``eos_token`` when given (the response
    text ends with it; it is then cut off), else it is taken as ended.
    """
    o = scheme_options(scheme, **{k: v for k, v in options.items() if k in OPTION_NAMES})
    sch = SCHEMES[scheme]
    extra_info = extra_info if isinstance(extra_info, dict) else {}
    d = get_dialect(dialect or extra_info.get("dialect") or sch.dialect)
    text = solution_str if isinstance(solution_str, str) else ""
    golds = as_gold_list(ground_truth)

    ended = _flag(extra_info.get("ended_by_eos"))
    if eos_token:
        stripped = text.rstrip()
        if ended is None:
            ended = stripped.endswith(eos_token)
        text = stripped.removesuffix(eos_token) if stripped.endswith(eos_token) else text
    truncated = ended is False
    opens = o.opens_think if o.opens_think is not None else bool(_flag(extra_info.get("opens_think")))

    own_text = strip_results(text, d)  # retrieved text must not supply the answer or count as queries
    answer = extract_answer(own_text, d, o.boxed_fallback)
    searches = _number(extra_info, "num_searches")
    num_searches = int(searches) if searches is not None else own_text.count(d.query_close)
    if scheme == "search_r1_format":
        format_ok = check_search_r1_sequence(text, d).ok
    else:
        format_ok = check_format(
            text, d, opens_think=opens, require_think=o.require_think, boxed_fallback=o.boxed_fallback
        ).ok
    format_ok = format_ok and not (o.require_eos and truncated)
    metrics = {name: fn(answer, golds, o.normalization) for name, fn in METRICS.items()}
    hit = format_ok and scheme == "search_r1_format" and _retrieval_hit(text, d, golds, o.normalization)
    g = Graded(format_ok, num_searches, answer is not None, metrics, o, hit)
    return {
        "score": float(sch.score(g)),
        **metrics,
        "format": float(format_ok),
        "truncated": float(truncated),
        "num_searches": num_searches,
        **{k: _number(extra_info, k) or 0.0 for k in PASSTHROUGH},
    }


def _retrieval_hit(text: str, d: Dialect, golds: list[str], normalization: str) -> bool:
    """Some result block of ``text`` contains a gold answer (normalised substring)."""
    pos = 0
    while (start := text.find(d.result_open, pos)) >= 0:
        end = text.find(d.result_close, start)
        if end < 0:
            return False
        if substring_exact_match(text[start + len(d.result_open) : end], golds, normalization):
            return True
        pos = end + len(d.result_close)
    return False
