"""Per-dialect format check of a whole decoded response, result blocks included.

A response is well formed when, scanning its tags left to right:

* every query open tag is closed before any other tag, and each closed query is followed, with only
  whitespace between, by a result block; a result block needs such a query in front of it;
* result blocks are opaque: whatever the retrieved text contains is skipped up to the result close tag;
* think tags are optional but balanced and not nested (queries may sit inside a think block);
* there is exactly one answer block, outside any think block, with no tag inside it, and nothing but
  whitespace after it; for boxed dialects it holds a ``\\boxed{...}`` with balanced braces.

Options follow the papers' code: ``opens_think`` (the prompt ended with the think open tag, as R1-Searcher's do, so
the response starts inside a think block), ``require_think`` (at least one closed think block, as ReSearch's code
requires) and ``boxed_fallback`` (False: an unclosed last ``\\boxed{`` fails even after a closed one, as ReSearch's
code has it). :func:`check_search_r1_sequence` is Search-R1's stricter state machine (``is_valid_sequence``).

The papers' own checks count tags instead of scanning them in order, and the rewards offer them as
``format_check="original"``: :func:`check_research_code` (ReSearch's ``validate_format``) and
:func:`check_r1_searcher_code` (R1-Searcher's stage-2 reward server); with Search-R1's state machine these accept
text after the answer, an answer inside a think block and tags out of order where the paper's code does. Every
check treats result blocks as opaque (the papers' code also counts tags inside retrieved documents: a flaw not
copied).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from .dialects import Dialect, extract_boxed, get_dialect, strip_results


@dataclass(frozen=True)
class FormatReport:
    ok: bool
    reason: str | None
    """Why the format is wrong; None when ``ok``."""
    num_queries: int
    """Queries closed before the scan stopped (all of them when ``ok``)."""


@cache
def _tag_pattern(d: Dialect) -> re.Pattern[str]:
    tags = {d.query_open, d.query_close, d.result_open, d.result_close, d.answer_open, d.answer_close}
    tags |= {d.think_open, d.think_close}
    tags.discard("")
    return re.compile("|".join(re.escape(t) for t in sorted(tags, key=len, reverse=True)))


def check_format(
    text: str,
    dialect: str | Dialect,
    *,
    opens_think: bool = False,
    require_think: bool = False,
    boxed_fallback: bool = True,
) -> FormatReport:
    """Check ``text`` against the dialect's format (options: see the module docstring); never raises on any string."""
    d = get_dialect(dialect)
    tags = _tag_pattern(d)
    num_queries = 0
    thoughts = 0

    def bad(reason: str) -> FormatReport:
        return FormatReport(False, reason, num_queries)

    in_think = opens_think
    awaiting_result: int | None = None  # end of the last query, until its result block starts
    pos = 0
    while (m := tags.search(text, pos)) is not None:
        tag, pos = m.group(), m.end()
        if awaiting_result is not None and (tag != d.result_open or text[awaiting_result : m.start()].strip()):
            return bad("query not followed by its result block")
        if tag == d.result_open:
            if awaiting_result is None:
                return bad("result block without a query before it")
            close = text.find(d.result_close, pos)
            if close < 0:
                return bad("unclosed result block")
            awaiting_result, pos = None, close + len(d.result_close)
        elif tag == d.query_open:
            nxt = tags.search(text, pos)
            if nxt is None or nxt.group() != d.query_close:
                return bad("unclosed or nested query")
            num_queries += 1
            awaiting_result = pos = nxt.end()
        elif tag == d.think_open:
            if in_think:
                return bad("nested think block")
            in_think = True
        elif tag == d.think_close:
            if not in_think:
                return bad(f"stray {tag}")
            in_think = False
            thoughts += 1
        elif tag == d.answer_open:
            if require_think and not thoughts:
                return bad("no think block")
            return _check_answer(text, pos, d, in_think, num_queries, boxed_fallback)
        else:
            return bad(f"stray {tag}")
    if awaiting_result is not None:
        return bad("query not followed by its result block")
    if in_think:
        return bad("unclosed think block")
    return bad("no answer block")


def _check_answer(
    text: str, start: int, d: Dialect, in_think: bool, num_queries: int, boxed_fallback: bool
) -> FormatReport:
    """The rest of the check once the answer open tag, ending at ``start``, has been read."""

    def bad(reason: str) -> FormatReport:
        return FormatReport(False, reason, num_queries)

    if in_think:
        return bad("answer inside a think block")
    nxt = _tag_pattern(d).search(text, start)
    if nxt is None or nxt.group() != d.answer_close:
        return bad("unclosed answer block or tag inside it")
    rest = text[nxt.end() :]
    if rest.strip():
        return bad("more than one answer block" if d.answer_open in rest else "text after the answer block")
    if d.boxed and extract_boxed(text[start : nxt.start()], boxed_fallback) is None:
        return bad("no \\boxed{} in the answer" if boxed_fallback else "no closed last \\boxed{} in the answer")
    return FormatReport(True, None, num_queries)


def check_search_r1_sequence(text: str, dialect: str | Dialect = "search_r1") -> FormatReport:
    """Search-R1's format (``is_valid_sequence`` of its format-shaped reward): exactly
    ``(think, query, result)* think, answer`` with only whitespace between blocks and after the answer; never
    raises. Result blocks are skipped whole (their code also parses tags inside retrieved documents)."""
    d = get_dialect(dialect)
    tags = _tag_pattern(d)
    nxt = {  # state -> {tag: next state}; the *_open states are inside a block
        "start": {d.think_open: "think_open"},
        "think_open": {d.think_close: "thought"},
        "thought": {d.query_open: "query_open", d.answer_open: "answer_open"},
        "query_open": {d.query_close: "queried"},
        "queried": {d.result_open: "result"},
        "read": {d.think_open: "think_open"},
        "answer_open": {d.answer_close: "done"},
    }
    state, pos, num_queries = "start", 0, 0
    while (m := tags.search(text, pos)) is not None:
        if not state.endswith("_open") and text[pos : m.start()].strip():
            return FormatReport(False, f"text outside the blocks before {m.group()}", num_queries)
        following = nxt.get(state, {}).get(m.group())
        if following is None:
            return FormatReport(False, f"{m.group()} out of order", num_queries)
        pos = m.end()
        if following == "result":
            close = text.find(d.result_close, pos)
            if close < 0:
                return FormatReport(False, "unclosed result block", num_queries)
            following, pos = "read", close + len(d.result_close)
        num_queries += following == "queried"
        state = following
    if state != "done":
        return FormatReport(
            False, "no answer block" if state != "answer_open" else "unclosed answer block", num_queries
        )
    if text[pos:].strip():
        return FormatReport(False, "text after the answer block", num_queries)
    return FormatReport(True, None, num_queries)


ASSISTANT_TURN = "Assistant:"
"""ReSearch's code splits prompt + response at this marker (base template) and scores the piece after the first
one; a response that writes it again is cut there, never ends with EOS, and scores 0."""


def check_research_code(
    text: str,
    dialect: str | Dialect = "research",
    *,
    opens_think: bool = False,
    require_think: bool = True,
    boxed_fallback: bool = False,
) -> FormatReport:
    """ReSearch's format check (``validate_format`` of its reward code) by tag counting: think tags balanced (at
    least one pair with ``require_think``), exactly one answer open and close tag in that order, each query followed
    in order by its close tag and a result block, a ``\\boxed{}`` in the answer (its last box closed unless
    ``boxed_fallback``), and no second ``Assistant:`` turn (see :data:`ASSISTANT_TURN`). Text after the answer, an
    answer inside a think block and think tags out of order pass, as in the code; never raises."""
    d = get_dialect(dialect)
    own = strip_results(text, d, keep_tags=True)
    queries = own.count(d.query_close)

    def bad(reason: str) -> FormatReport:
        return FormatReport(False, reason, queries)

    if ASSISTANT_TURN in own:
        return bad(f"the response goes on after {ASSISTANT_TURN!r} (ReSearch's code cuts it there)")
    closes = own.count(d.think_close)
    if own.count(d.think_open) + opens_think != closes:
        return bad("think tags do not pair up")
    if require_think and not closes:
        return bad("no think block")
    if own.count(d.answer_open) != 1 or own.count(d.answer_close) != 1:
        return bad("not exactly one answer open and close tag")
    pos = 0
    while (q := own.find(d.query_open, pos)) >= 0:
        q_end, r = own.find(d.query_close, q), own.find(d.result_open, q)
        r_end = own.find(d.result_close, r) if r >= 0 else -1
        if min(q_end, r, r_end) < 0 or not q < q_end < r < r_end:
            return bad("query not followed by its result block")
        pos = r_end
    start, end = own.find(d.answer_open), own.find(d.answer_close)
    if start > end:
        return bad("answer close tag before its open tag")
    if d.boxed and extract_boxed(own[start + len(d.answer_open) : end], boxed_fallback) is None:
        return bad("no \\boxed{} in the answer" if boxed_fallback else "no closed last \\boxed{} in the answer")
    return FormatReport(True, None, queries)


def check_r1_searcher_code(
    text: str, dialect: str | Dialect = "r1_searcher", *, opens_think: bool = True
) -> FormatReport:
    """R1-Searcher's format check (its stage-2 reward server) by tag counting: as many query open and close tags as
    document open and close tags, exactly one think block (its prompts open it: ``opens_think``), exactly one
    answer open and close tag, and no query or document tag in the text after the last answer open tag. Text after
    the answer, an answer inside the think block and tags out of order pass, as in the code; never raises."""
    d = get_dialect(dialect)
    own = strip_results(text, d, keep_tags=True)
    queries = own.count(d.query_close)

    def bad(reason: str) -> FormatReport:
        return FormatReport(False, reason, queries)

    counts = {own.count(t) for t in (d.query_open, d.query_close, d.result_open, d.result_close)}
    if len(counts) > 1:
        return bad("query and document tags do not pair up")
    if own.count(d.think_open) + opens_think != 1 or own.count(d.think_close) != 1:
        return bad("not exactly one think block")
    if own.count(d.answer_open) != 1 or own.count(d.answer_close) != 1:
        return bad("not exactly one answer open and close tag")
    answer = own.rsplit(d.answer_open, 1)[1].split(d.answer_close, 1)[0]
    if d.query_open in answer or d.result_open in answer:
        return bad("a query or documents inside the answer")
    return FormatReport(True, None, queries)


def has_cjk(text: str) -> bool:
    """Some character of ``text`` is a CJK unified ideograph (U+4E00 to U+9FFF, the range R1-Searcher's stage-2
    code tests; kana and hangul are outside it)."""
    return any("\u4e00" <= c <= "\u9fff" for c in text)
