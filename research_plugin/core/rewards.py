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
from collections.abc import Callable, Mapping
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
from .dialects import DIALECTS, Dialect, extract_answer, get_dialect, strip_results
from .format_check import (
    FormatReport,
    check_format,
    check_r1_searcher_code,
    check_research_code,
    check_search_r1_sequence,
    has_cjk,
)
from .settings import as_mapping, check_choice, check_fields, check_keys, convert, to_bool

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
    format_check: str = "original"
    """``original``: the scheme's paper's own check and answer reading; ``strict``: :func:`.format_check.check_format`,
    the same tag grammar for every scheme (see :data:`FORMAT_CHECKS`)."""
    forbid_cjk: bool = False
    """A CJK ideograph in the policy's own text (documents excepted) fails the format (R1-Searcher's stage-2 code)."""


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
    """Some result block contains a gold answer (:func:`retrieval_hit`)."""

    @property
    def answer_score(self) -> float:
        return self.metrics[self.options.metric]


def research(g: Graded) -> float:
    """ReSearch: 0 for a wrong format, else the answer's F1, or 0.1 when that F1 is 0.

    Follows ReSearch's reward code (F1 with ``validate_format``; :data:`.papers.PAPERS` names the repository)."""
    if not g.format_ok:
        return 0.0
    return g.answer_score if g.answer_score > 0 else 0.1


def r1_stage1(g: Graded) -> float:
    """R1-Searcher stage 1: 0.5 for searching at least once + 0.5 for a right format (+1 / -1 with answer_reward).

    That is the paper's form; ``answer_reward`` adds its stage-1 code's +1 / -1 for a covered / missed answer.
    Follows the R1-Searcher paper (its stage-1 format code is not released; the stage-2 counting is used).
    """
    score = 0.5 * (g.num_searches > 0) + 0.5 * g.format_ok
    if g.options.answer_reward:
        score += 1.0 if g.answered and g.answer_score > 0 else -1.0
    return score


def r1_stage2(g: Graded) -> float:
    """R1-Searcher stage 2: the answer metric, minus ``format_penalty`` for a wrong format.

    Follows R1-Searcher's stage-2 reward server (its tag counting and normalisation)."""
    return g.answer_score - (0.0 if g.format_ok else g.options.format_penalty)


def search_r1_em(g: Graded) -> float:
    """Search-R1: exact match of the answer (``metric="subem"``: its sub-EM); the format is not checked.

    Follows Search-R1's ``qa_em``."""
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


def research_code(text: str, d: Dialect, o: Options, opens_think: bool) -> FormatReport:
    """ReSearch's ``validate_format`` (see :func:`.format_check.check_research_code`)."""
    return check_research_code(
        text, d, opens_think=opens_think, require_think=o.require_think, boxed_fallback=o.boxed_fallback
    )


def r1_searcher_code(text: str, d: Dialect, o: Options, opens_think: bool) -> FormatReport:
    """R1-Searcher's stage-2 reward server's tag counting (see :func:`.format_check.check_r1_searcher_code`)."""
    return check_r1_searcher_code(text, d, opens_think=opens_think)


def search_r1_code(text: str, d: Dialect, o: Options, opens_think: bool) -> FormatReport:
    """Search-R1's ``is_valid_sequence`` (see :func:`.format_check.check_search_r1_sequence`)."""
    return check_search_r1_sequence(text, d)


@dataclass(frozen=True)
class Scheme:
    score: Callable[[Graded], float]
    dialect: str
    defaults: Options = field(default_factory=Options)
    bounds: tuple[float, float] = (0.0, 1.0)
    """The lowest and highest score with the default options (property-tested)."""
    original_check: Callable[[str, Dialect, Options, bool], FormatReport] = research_code
    """The format check of the paper's code (``format_check="original"``)."""
    original_reading: str = "last_block"
    """How the paper's code finds the answer block (``format_check="original"``; :data:`.dialects.ANSWER_READINGS`)."""


FORMAT_CHECKS = ("strict", "original")
"""``format_check`` values. ``strict`` scans the tags in order (:func:`.format_check.check_format`: one answer
block outside any think block, nothing after it, queries each followed by a result block) and reads the last
closed answer block. ``original`` is the scheme's paper's code: ReSearch's and R1-Searcher's tag counting, which
let text after the answer, an answer inside a think block and misordered tags pass, and Search-R1's state
machine; with that code's answer reading (R1-Searcher: the text after the last answer open tag; Search-R1: its
non-greedy regex). Each scheme defaults to ``original``, as its paper's code."""

_R1 = {"original_check": r1_searcher_code, "original_reading": "after_last_open"}
_SEARCH_R1 = {"original_check": search_r1_code, "original_reading": "first_close"}
SCHEMES: dict[str, Scheme] = {
    "research": Scheme(research, "research", Options(require_eos=True, require_think=True, boxed_fallback=False)),
    "r1_stage1": Scheme(r1_stage1, "r1_searcher", Options(metric="acc_r", normalization="r1_searcher"), **_R1),
    "r1_stage2": Scheme(
        r1_stage2, "r1_searcher", Options(normalization="r1_searcher", forbid_cjk=True), (-2.0, 1.0), **_R1
    ),
    "search_r1_em": Scheme(search_r1_em, "search_r1", Options(metric="em"), **_SEARCH_R1),
    "search_r1_format": Scheme(search_r1_format, "search_r1", Options(metric="em"), **_SEARCH_R1),
}


def _number(extra_info: dict, key: str) -> float | None:
    """``extra_info[key]`` as a finite float, or None."""
    try:
        x = float(extra_info[key])
    except (KeyError, TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _flag(value: Any, row_key: str | None = None) -> bool | None:
    """A boolean a host or a row recorded (bool, 0/1, numpy bool, "true" / "false"), or None when it recorded none.
    Other text is None, or an error naming ``extra_info[row_key]`` when the value is a row's setting."""
    if value is None:
        return None
    if isinstance(value, str):
        if row_key is not None:
            return to_bool(value, f"extra_info[{row_key!r}]", "row")
        text = value.strip().lower()
        return text == "true" if text in ("true", "false") else None
    try:
        return bool(value)
    except (TypeError, ValueError):
        return None


REWARD_ARGUMENTS = ("scheme", "dialect", "eos_token")
""":func:`compute_score`'s keyword arguments besides the :class:`Options` fields."""
HOST_KWARGS = frozenset({"reward_router_address", "reward_model_tokenizer"})
"""Keyword arguments verl 0.9.1's reward managers add to a ``compute_score`` call besides ``data_source``,
``solution_str``, ``ground_truth``, ``extra_info`` and the user's ``reward_kwargs`` (when a reward-model router is
set; ``experimental/reward_loop/reward_manager/{naive,dapo,gdpo,limited,remote}.py``): accepted and unused."""
COMPUTE_SCORE_WHERE = (
    "compute_score's keyword arguments (verl: reward.custom_reward_function.reward_kwargs; OpenRLHF: the agent "
    "settings' reward)"
)


def scheme_options(scheme: str, *, where: str = "reward options", **overrides: Any) -> Options:
    """The options of ``scheme``: its defaults, with the ``overrides`` that are not None; each checked against its
    :class:`Options` field (an unknown name, a wrong type or an unknown metric / normalisation raises a
    :class:`~.settings.SettingsError` naming it and ``where`` it came from; "false" and "0.5" are read as
    false and 0.5, as :mod:`.settings` says)."""
    check_choice(scheme, SCHEMES, where, "reward scheme")
    check_keys(overrides, OPTION_NAMES, where, "reward options")
    given = check_fields(Options, {k: v for k, v in overrides.items() if v is not None}, where, "reward options")
    o = replace(SCHEMES[scheme].defaults, **given)
    check_choice(o.metric, METRICS, where, "metric")
    check_choice(o.normalization, NORMALIZATIONS, where, "normalization")
    check_choice(o.format_check, FORMAT_CHECKS, where, "format_check")
    return o


def check_reward_kwargs(kwargs: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """:func:`compute_score`'s keyword arguments as a user wrote them (verl's ``reward_kwargs``, OpenRLHF's
    ``reward`` settings), checked as a call would check them, before any response is scored; returned converted
    (``"false"`` -> False)."""
    kwargs = {k: v for k, v in as_mapping(kwargs, where).items() if k not in HOST_KWARGS}
    check_keys(kwargs, [*REWARD_ARGUMENTS, *OPTION_NAMES], where, "reward options")
    out = dict(kwargs)
    if kwargs.get("dialect") is not None:
        check_choice(kwargs["dialect"], DIALECTS, where, "dialect")
    if kwargs.get("eos_token") is not None:
        convert(kwargs["eos_token"], str, "eos_token", where)
    options = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
    o = scheme_options(kwargs.get("scheme", "research"), where=where, **options)
    out.update({k: getattr(o, k) for k, v in options.items() if v is not None})
    return out


def compute_score(
    data_source: Any,
    solution_str: Any,
    ground_truth: Any,
    extra_info: dict | None = None,
    scheme: str | None = None,
    dialect: str | Dialect | None = None,
    eos_token: str | None = None,
    **options: Any,
) -> dict[str, float]:
    """Score one response for verl; every value of the returned dict is a number.

    Scheme: ``scheme`` > ``extra_info["scheme"]`` (a prepared row's) > ``research``. Dialect: ``dialect`` >
    ``extra_info["dialect"]`` > the scheme's own. ``options`` are the fields of
    :class:`Options` (``metric``, ``normalization``, ``require_eos``, ...), each defaulting to the scheme's; any
    other keyword argument is an error (:data:`HOST_KWARGS`, verl's own, excepted). Whether the response ended
    with EOS comes from ``extra_info["ended_by_eos"]`` (the agent loop records it), else from ``eos_token`` when
    given (the response text ends with it; it is then cut off), else it is taken as ended.
    """
    options = {k: v for k, v in options.items() if k not in HOST_KWARGS}
    extra_info = extra_info if isinstance(extra_info, dict) else {}
    scheme = scheme or extra_info.get("scheme") or "research"
    check_keys(options, [*REWARD_ARGUMENTS, *OPTION_NAMES], COMPUTE_SCORE_WHERE, "reward options")
    o = scheme_options(scheme, where=COMPUTE_SCORE_WHERE, **options)
    sch = SCHEMES[scheme]
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
    opens = o.opens_think if o.opens_think is not None else bool(_flag(extra_info.get("opens_think"), "opens_think"))

    answer, report = read_response(text, scheme, d, o, opens_think=opens)
    searches = _number(extra_info, "num_searches")
    num_searches = int(searches) if searches is not None else strip_results(text, d).count(d.query_close)
    format_ok = report.ok and not (o.require_eos and truncated)
    metrics = {name: fn(answer, golds, o.normalization) for name, fn in METRICS.items()}
    hit = retrieval_hit(text, d, golds, o.normalization)
    g = Graded(format_ok, num_searches, answer is not None, metrics, o, hit)
    return {
        "score": float(sch.score(g)),
        **metrics,
        "format": float(format_ok),
        "retrieval_hit": float(hit),
        "truncated": float(truncated),
        "num_searches": num_searches,
        **{k: _number(extra_info, k) or 0.0 for k in PASSTHROUGH},
    }


def read_response(
    text: str, scheme: str, d: Dialect, o: Options, opens_think: bool = False
) -> tuple[str | None, FormatReport]:
    """The answer and the format of a response as ``scheme`` with options ``o`` reads them (the reward and
    evaluation both use this; ``require_eos`` is applied by the caller, which knows how it ended).

    The answer is read from the policy's own text (result blocks skipped); with ``forbid_cjk`` a CJK ideograph in
    that text fails the format.
    """
    own = strip_results(text, d)  # retrieved text must not supply the answer or count as queries
    if o.format_check == "original":
        sch = SCHEMES[scheme]
        answer = extract_answer(own, d, o.boxed_fallback, sch.original_reading)
        report = sch.original_check(text, d, o, opens_think)
    else:
        answer = extract_answer(own, d, o.boxed_fallback)
        report = check_format(
            text, d, opens_think=opens_think, require_think=o.require_think, boxed_fallback=o.boxed_fallback
        )
    if report.ok and o.forbid_cjk and has_cjk(own):
        report = FormatReport(False, "a CJK character outside the documents", report.num_queries)
    return answer, report


def retrieval_hit(text: str, d: Dialect, golds: list[str], normalization: str) -> bool:
    """Some result block of ``text`` contains a gold answer as a normalised substring, even inside a word (Search-R1's
    ``is_retrieval_correct``; the reward's ``retrieval_hit``, lambda_r of ``search_r1_format``). Not eval's
    ``retrieval_recall``, which needs the gold on token boundaries (:func:`..evaluation.metrics.retrieval_recall`)."""
    pos = 0
    while (start := text.find(d.result_open, pos)) >= 0:
        end = text.find(d.result_close, start)
        if end < 0:
            return False
        if substring_exact_match(text[start + len(d.result_open) : end], golds, normalization):
            return True
        pos = end + len(d.result_close)
    return False
