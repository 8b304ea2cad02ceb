"""Prompt templates per dialect: a raw template for base models and a system prompt for instruct models, around the
rules its paper teaches (:data:`.papers.PAPERS`).

They carry the rules the papers give the policy: think in think tags, search with the dialect's query
tags, read results in the result tags, answer once in answer tags (inside ``\\boxed{}`` for ReSearch).

R1-Searcher's prompts end with the think open tag after ``Assistant:`` (and its chat prompts put it after the chat
template's generation prompt), so the policy's response starts inside a think block: ``opens_think``. The reward's
format check must then know it too: prepared rows carry ``extra_info["opens_think"]``.
"""

from __future__ import annotations

from .dialects import Dialect, get_dialect
from .papers import PAPERS


def system_prompt(dialect: str | Dialect) -> str:
    """System prompt for instruct models (the question goes in the user message)."""
    d = get_dialect(dialect)
    return "You are a helpful assistant that answers questions with the help of search. " + PAPERS[d.name].rules


def base_prompt(question: str, dialect: str | Dialect, opens_think: bool = False) -> str:
    """Raw prompt for base models: the rules, then ``User: {question}. Assistant:`` (`` <think>`` appended with
    ``opens_think``)."""
    d = get_dialect(dialect)
    prompt = (
        f"A conversation between User and Assistant. The user asks a question. {PAPERS[d.name].rules} "
        f"User: {question.strip()}. Assistant:"
    )
    return f"{prompt} {d.think_open}" if opens_think else prompt


def chat_messages(question: str, dialect: str | Dialect) -> list[dict[str, str]]:
    """Chat messages for instruct models, as a verl dataset row's ``prompt``."""
    return [
        {"role": "system", "content": system_prompt(dialect)},
        {"role": "user", "content": question.strip()},
    ]
