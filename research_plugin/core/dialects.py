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
    documents: str = "doc_title"
    """How retrieved passages are rendered, as the dialect's paper did (see :data:`DOCUMENT_STYLES`)."""

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
            documents="numbered",
        ),
        Dialect("search_r1", "<search>", "</search>", "<information>", "</information>", documents="search_r1"),
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


DOCUMENT_STYLES = ("doc_title", "numbered", "search_r1")
"""Passage renderings: ``doc_title`` ``Doc 1 (Title: T) text`` (the ``research`` dialect's; the shipped policy
reads it), ``numbered`` ``(1)T. text`` (R1-Searcher's code: ``(j+1)`` glued to the retrieved document, one a
line), ``search_r1`` ``Doc 1(Title: T) text`` (Search-R1's ``_passages2string``), whose result block has no line
breaks inside its tags."""


def format_passages(passages: Iterable[PassageLike], dialect: str | Dialect | None = None) -> str:
    """Numbered passages with their titles, one per line, rendered as ``dialect``'s paper did (default:
    ``doc_title``; see :data:`DOCUMENT_STYLES`)."""
    style = get_dialect(dialect).documents if dialect is not None else "doc_title"
    lines = []
    for i, p in enumerate(passages, 1):
        text = " ".join(p.text.split())
        if style == "numbered":
            lines.append(f"({i}){p.title}. {text}" if p.title else f"({i}){text}")
        elif style == "search_r1":
            lines.append(f"Doc {i}(Title: {p.title}) {text}" if p.title else f"Doc {i} {text}")
        else:
            lines.append(f"Doc {i} (Title: {p.title}) {text}" if p.title else f"Doc {i} {text}")
    return "\n".join(lines)


def result_block(body: str, dialect: Dialect) -> str:
    """The text appended after a query: the result tags around ``body``, with the spacing its paper's code uses
    (Search-R1: none inside the tags)."""
    if dialect.documents == "search_r1":
        return f"\n\n{dialect.result_open}{body.strip()}{dialect.result_close}\n\n"
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


ANSWER_READINGS = ("last_block", "after_last_open", "first_close")
"""How the answer block is found: ``last_block``, the last close tag and the last open tag before it (ours);
``after_last_open``, the text after the last open tag up to the next close tag or the end, when both tags occur
(R1-Searcher's ``split(open)[-1].split(close)[0]``); ``first_close``, each open tag closed by the first close tag
after it, the last such block (Search-R1's ``open(.*?)close`` regex: ``<answer> x <answer> y </answer>`` reads
``x <answer> y``)."""


def answer_block(text: str, dialect: Dialect, reading: str = "last_block") -> str | None:
    """The answer block's text as ``reading`` finds it (see :data:`ANSWER_READINGS`); None when there is none."""
    o, c = dialect.answer_open, dialect.answer_close
    if reading == "last_block":
        return _last_block(text, o, c)
    if reading == "after_last_open":
        if o not in text or c not in text:
            return None
        return text.rsplit(o, 1)[1].split(c, 1)[0]
    if reading == "first_close":
        found, pos = None, 0
        while (start := text.find(o, pos)) >= 0 and (end := text.find(c, start + len(o))) >= 0:
            found, pos = text[start + len(o) : end], end + len(c)
        return found
    raise ValueError(f"answer reading must be one of {', '.join(ANSWER_READINGS)}, not {reading!r}")


def extract_answer(text: str, dialect: Dialect, boxed_fallback: bool = True, reading: str = "last_block") -> str | None:
    """The final answer: ``\\boxed{}`` inside the answer block for boxed dialects, else that block's text
    (``boxed_fallback``: see :func:`extract_boxed`; ``reading``: see :data:`ANSWER_READINGS`)."""
    block = answer_block(text, dialect, reading)
    if block is None:
        return None
    if dialect.boxed:
        return extract_boxed(block, boxed_fallback)
    return block.strip()


def strip_results(text: str, dialect: Dialect, keep_tags: bool = False) -> str:
    """``text`` with every result block removed (what the policy itself wrote), or with ``keep_tags`` only its
    contents (the tags stay, empty, for checks that count them); linear time."""
    kept, pos = [], 0
    while (start := text.find(dialect.result_open, pos)) >= 0:
        end = text.find(dialect.result_close, start + len(dialect.result_open))
        if end < 0:  # unclosed: no later block can close either, so the rest stays
            break
        kept.append(text[pos:start] + (dialect.result_open + dialect.result_close if keep_tags else ""))
        pos = end + len(dialect.result_close)
    kept.append(text[pos:])
    return "".join(kept)
