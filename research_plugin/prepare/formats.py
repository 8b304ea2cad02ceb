"""Published question-answering formats, parsed into one :class:`QAExample` per record.

Each parser takes one decoded record and returns a :class:`QAExample` or raises :class:`BadRow` saying what
is wrong (no question, no answer, a wrong type). :func:`detect_format` names the format from a record's keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class BadRow(ValueError):
    """A record that cannot become a training row; the message says why."""


@dataclass(frozen=True)
class QAExample:
    id: str | None
    """The record's own id, as text; None when the format has none (the pipeline numbers those)."""
    question: str
    answers: tuple[str, ...]
    """Every accepted answer: the gold answer first, then aliases, without repeats."""
    answerable: bool = True


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _question(rec: Mapping, key: str = "question") -> str:
    value = rec.get(key)
    if not isinstance(value, str):
        raise BadRow(f"no question: {key!r} is {_type(value)}" if key in rec else f"no question: no {key!r} field")
    if not value.strip():
        raise BadRow(f"no question: {key!r} is empty")
    return value.strip()


def _strings(value: Any, key: str) -> list[str]:
    """A string or a list of strings."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise BadRow(f"{key!r} is {_type(value)}, not a string or a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRow(f"{key}[{i}] is {_type(item)}, not a string")
    return value


def _answers(rec: Mapping, key: str, *alias_keys: str) -> tuple[str, ...]:
    """``rec[key]`` then the optional aliases, stripped, without repeats or blanks."""
    if rec.get(key) is None:
        raise BadRow(f"no answer: {key!r} is null" if key in rec else f"no answer: no {key!r} field")
    found = _strings(rec[key], key)
    for alias_key in alias_keys:
        if rec.get(alias_key) is not None:
            found = found + _strings(rec[alias_key], alias_key)
    answers = tuple(dict.fromkeys(a.strip() for a in found if a.strip()))
    if not answers:
        raise BadRow(f"no answer: {key!r} is empty")
    return answers


def _id(rec: Mapping, key: str) -> str | None:
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRow(f"{key!r} is {_type(value)}, not a string or an integer")
    return str(value)


def flashrag(rec: Mapping) -> QAExample:
    """FlashRAG: ``{"id", "question", "golden_answers": [...], "metadata"}`` (also NQ, TriviaQA, PopQA...)."""
    return QAExample(_id(rec, "id"), _question(rec), _answers(rec, "golden_answers"))


def musique(rec: Mapping) -> QAExample:
    """MuSiQue: ``id, question, answer, answer_aliases, answerable, paragraphs, question_decomposition``."""
    answerable = rec.get("answerable", True)
    if not isinstance(answerable, bool):
        raise BadRow(f"'answerable' is {_type(answerable)}, not a boolean")
    answers = _answers(rec, "answer", "answer_aliases")
    return QAExample(_id(rec, "id"), _question(rec), answers, answerable)


def hotpotqa(rec: Mapping) -> QAExample:
    """HotpotQA (and 2WikiMultiHopQA): ``_id, question, answer`` next to contexts and supporting facts."""
    return QAExample(_id(rec, "_id"), _question(rec), _answers(rec, "answer"))


def r1_searcher(rec: Mapping) -> QAExample:
    """R1-Searcher's training and eval jsonl: ``{"idx", "question", "answer", ...}``; answer a string or a list."""
    return QAExample(_id(rec, "idx"), _question(rec), _answers(rec, "answer"))


def qa(rec: Mapping) -> QAExample:
    """Plain question/answer records (Bamboogle's csv ``Question,Answer`` or jsonl); key case does not matter."""
    lower = {k.lower(): v for k, v in rec.items() if isinstance(k, str)}
    ident = next((_id(lower, k) for k in ("id", "idx", "_id") if lower.get(k) not in (None, "")), None)
    return QAExample(ident, _question(lower), _answers(lower, "answer"))


def verl(rec: Mapping) -> QAExample:
    """A parquet this command wrote (``extra_info.question``, ``reward_model.ground_truth``), to re-prepare it."""
    extra, reward = rec.get("extra_info"), rec.get("reward_model")
    if not isinstance(extra, Mapping) or not isinstance(reward, Mapping):
        raise BadRow("no 'extra_info' / 'reward_model' mapping")
    return QAExample(_id(extra, "id"), _question(extra), _answers(reward, "ground_truth"))


FORMATS: dict[str, Callable[[Mapping], QAExample]] = {
    "flashrag": flashrag,
    "musique": musique,
    "hotpotqa": hotpotqa,
    "2wiki": hotpotqa,
    "r1_searcher": r1_searcher,
    "qa": qa,
    "verl": verl,
}


def detect_format(rec: Any) -> str | None:
    """The format a record's keys point to, or None when they match none."""
    if not isinstance(rec, Mapping):
        return None
    keys = set(rec)
    if "golden_answers" in keys:
        return "flashrag"
    if keys & {"answerable", "answer_aliases", "question_decomposition"}:
        return "musique"
    if "_id" in keys and "evidences" in keys:
        return "2wiki"
    if "_id" in keys:
        return "hotpotqa"
    if "idx" in keys and "question" in keys:
        return "r1_searcher"
    if {"extra_info", "reward_model"} <= keys:
        return "verl"
    if {"question", "answer"} <= {k.lower() for k in keys if isinstance(k, str)}:
        return "qa"
    return None


def parse(rec: Any, fmt: str) -> QAExample:
    """``rec`` in format ``fmt``; :class:`BadRow` when it is not a record of that format."""
    if not isinstance(rec, Mapping):
        raise BadRow(f"a {_type(rec)}, not an object")
    return FORMATS[fmt](rec)
