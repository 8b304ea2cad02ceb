"""Tag dialects: how a policy asks for a search, how results come back, and where its answer is.

Each dialect is plain data. The functions below are the only places that parse or write tags, so the
agent loop, the format check and the rewards all agree on what a dialect means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Dialect:
    name: str
    query_open: str
    query_close: str
    result_open: str
    result_close: str
    answer_open: str = "<answer>"
    answer_close: str = "</answer>"
    think_open: str = "<think>"
    think_close: str = "</think>"
    boxed: bool = False
    """Whether the final answer sits in ``\\boxed{}`` inside the answer block."""

    @property
    def stop(self) -> str:
        """The stop string that ends a generation segment when the policy issues a query."""
        return self.query_close


DIALECTS: dict[str, Dialect] = {
    d.name: d
    for d in (
        Dialect("research", "<search>", "</search>", "<result>", "</result>", boxed=True),
        Dialect(
            "r1_searcher",
            "<|begin_of_query|>",
            "<|end_of_query|>",
            "<|begin_of_documents|>",
            "<|end_of_documents|>",
        ),
        Dialect("search_r1", "<search>", "</search>", "<information>", "</information>"),
    )
}


def get_dialect(name: str | Dialect) -> Dialect:
    if isinstance(name, Dialect):
        return name
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; known: {sorted(DIALECTS)}") from None


class PassageLike(Protocol):
    title: str
    text: str


def stopped_at_query(text: str, dialect: Dialect) -> bool:
    """True when a generation segment ended on the dialect's query close tag.

    Engines stop on the tag inside a token, so a few trailing non-alphanumeric characters of that last
    token (a newline, a period) may follow it.
    """
    close = text.rfind(dialect.query_close)
    if close < 0:
        return False
    tail = text[close + len(dialect.query_close) :]
    return len(tail) <= 8 and not any(c.isalnum() for c in tail)


def extract_query(text: str, dialect: Dialect) -> str | None:
    """The query between the last open tag and the close tag that ended ``text``.

    Returns None when there is no close tag or no open tag before it; the caller decides what an
    empty string (``<search></search>``) means.
    """
    close = text.rfind(dialect.query_close)
    if close < 0:
        return None
    open_ = text.rfind(dialect.query_open, 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(dialect.query_open) : close].strip()


def format_passages(passages: Iterable[PassageLike]) -> str:
    """Numbered passages with their titles, one per line."""
    lines = []
    for i, p in enumerate(passages, 1):
        text = " ".join(p.text.split())
        lines.append(f"Doc {i} (Title: {p.title}) {text}" if p.title else f"Doc {i} {text}")
    return "\n".join(lines)


def result_block(body: str, dialect: Dialect) -> str:
    """The text appended after a query: the result tags around ``body``, with the spacing the papers use."""
    return f"\n\n{dialect.result_open}\n{body.strip()}\n{dialect.result_close}\n\n"


def _last_block(text: str, open_tag: str, close_tag: str) -> str | None:
    close = text.rfind(close_tag)
    if close < 0:
        return None
    open_ = text.rfind(open_tag, 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(open_tag) : close]


def extract_boxed(text: str, fallback: bool = True) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, with nested braces balanced; None if absent.

    When the last box is unclosed, an earlier closed one is taken with ``fallback``, else None (ReSearch's code).
    """
    start = text.rfind("\\boxed{")
    while start >= 0:
        i = start + len("\\boxed{")
        depth = 1
        for j in range(i, len(text)):
            c = text[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j].strip()
        if not fallback:
            return None
        start = text.rfind("\\boxed{", 0, start)  # unclosed: try an earlier box
    return None


def extract_answer(text: str, dialect: Dialect, boxed_fallback: bool = True) -> str | None:
    """The final answer: ``\\boxed{}`` inside the last answer block for boxed dialects, else that block's text
    (``boxed_fallback``: see :func:`extract_boxed`)."""
    block = _last_block(text, dialect.answer_open, dialect.answer_close)
    if block is None:
        return None
    if dialect.boxed:
        return extract_boxed(block, boxed_fallback)
    return block.strip()


def strip_results(text: str, dialect: Dialect) -> str:
    """``text`` with every result block removed (what the policy itself wrote); linear time."""
    kept, pos = [], 0
    while (start := text.find(dialect.result_open, pos)) >= 0:
        end = text.find(dialect.result_close, start + len(dialect.result_open))
        if end < 0:  # unclosed: no later block can close either, so the rest stays
            break
        kept.append(text[pos:start])
        pos = end + len(dialect.result_close)
    kept.append(text[pos:])
    return "".join(kept)
