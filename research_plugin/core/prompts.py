"""Prompt templates per dialect: a raw template for base models and a system prompt for instruct models.

They carry the rules the papers give the policy: think in think tags, search with the dialect's query
tags, read results in the result tags, answer once in answer tags (inside ``\\boxed{}`` for ReSearch).

R1-Searcher's prompts end with the think open tag after ``Assistant:`` (and its chat prompts put it after the chat
template's generation prompt), so the policy's response starts inside a think block: ``opens_think``. The reward's
format check must then know it too: prepared rows carry ``extra_info["opens_think"]``.
"""

from __future__ import annotations

from .dialects import Dialect, get_dialect

_RULES = {
    "research": (
        "The assistant first thinks about the reasoning process and then gives the answer. While thinking, "
        "the assistant may search Wikipedia for facts about specific topics when needed. The reasoning is "
        "enclosed in <think> </think>, a search query in <search> </search>, the search result in "
        "<result> </result>, and the answer in <answer> </answer>. For example: <think> reasoning </think> "
        "<search> a search query </search> <result> the search result </result> <think> reasoning </think> "
        "<answer> The final answer is \\boxed{answer here} </answer>. The exact final answer goes in "
        "\\boxed{} at the end of the answer."
    ),
    "r1_searcher": (
        "The assistant first thinks about the reasoning process and then gives the answer. The reasoning is "
        "enclosed in <think> </think> and the answer in <answer> </answer>. While thinking, the assistant can "
        "search for uncertain knowledge by writing <|begin_of_query|> keyword_1 keyword_2 ... <|end_of_query|> "
        "(keywords only). The system then returns documents in <|begin_of_documents|> ... "
        "<|end_of_documents|>. The assistant may search as often as it needs, and writes the final answer, "
        "as short as possible, in <answer> </answer>."
    ),
    "search_r1": (
        "Answer the given question. Reason inside <think> and </think> first, every time you get new "
        "information. If you lack some knowledge, call a search engine with <search> query </search>; it "
        "returns the top results between <information> and </information>. You can search as many times as "
        "you want. When no further knowledge is needed, give the answer inside <answer> and </answer> without "
        "explanation, for example <answer> Beijing </answer>."
    ),
}


def system_prompt(dialect: str | Dialect) -> str:
    """System prompt for instruct models (the question goes in the user message)."""
    d = get_dialect(dialect)
    return "You are a helpful assistant that answers questions with the help of search. " + _RULES[d.name]


OPENS_THINK_BY_DEFAULT = {"research": False, "r1_searcher": True, "search_r1": False}
"""Whether a dialect's prompts open the think block (as its paper's code does)."""


def base_prompt(question: str, dialect: str | Dialect, opens_think: bool = False) -> str:
    """Raw prompt for base models: the rules, then ``User: {question}. Assistant:`` (`` <think>`` appended with
    ``opens_think``)."""
    d = get_dialect(dialect)
    prompt = (
        f"A conversation between User and Assistant. The user asks a question. {_RULES[d.name]} "
        f"User: {question.strip()}. Assistant:"
    )
    return f"{prompt} {d.think_open}" if opens_think else prompt


def chat_messages(question: str, dialect: str | Dialect) -> list[dict[str, str]]:
    """Chat messages for instruct models, as a verl dataset row's ``prompt``."""
    return [
        {"role": "system", "content": system_prompt(dialect)},
        {"role": "user", "content": question.strip()},
    ]
