"""What a search agent writes, scripted: each trajectory's generation calls and the tokens of each.

A trajectory (numbered ``index`` within a run of ``seed``) searches 2-4 times, uniformly (ReSearch-7B's 2-4
searches a question), and then answers: one generation call per search, ending on the dialect's query close tag
(``<think> ... </think> <search> query </search>``), and a last one ending in the answer and EOS. Call lengths
are log-normal (by default median 160 tokens for a thinking-and-query call, 240 for the answer, spread 0.5, so a
tenth run past twice the median), drawn from ``(seed, index)`` alone: the same on every machine and in every
process, whichever engine replica serves the trajectory.

:class:`ScriptedText` turns a call's length into token ids of real text in a dialect, for the tokenizer given: a
think block padded with a one-token word to the length, and the query or answer closing it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from ..core.dialects import get_dialect


@dataclass(frozen=True)
class ScriptShape:
    """The distribution of scripted trajectories (module docstring)."""

    min_searches: int = 2
    max_searches: int = 4
    query_tokens: float = 160.0
    answer_tokens: float = 240.0
    spread: float = 0.5
    max_call_tokens: int = 1024

    def __post_init__(self) -> None:
        if not 0 <= self.min_searches <= self.max_searches:
            raise ValueError(f"script shape: need 0 <= min_searches <= max_searches, not {self}")
        if min(self.query_tokens, self.answer_tokens, self.max_call_tokens) < 1 or self.spread < 0:
            raise ValueError(f"script shape: token counts must be >= 1 and spread >= 0, not {self}")

    def calls(self, seed: int, index: int) -> list[int]:
        """Tokens each generation call of trajectory ``index`` writes: one per search, then the answer."""
        rng = random.Random(f"{seed}:{index}")
        searches = rng.randint(self.min_searches, self.max_searches)
        medians = [self.query_tokens] * searches + [self.answer_tokens]
        return [max(1, min(self.max_call_tokens, round(m * math.exp(rng.gauss(0.0, self.spread))))) for m in medians]


class ScriptedText:
    """Token ids of scripted calls in ``dialect`` for ``tokenizer`` (module docstring)."""

    FILLER = " the"

    def __init__(self, tokenizer: Any, dialect: str = "research") -> None:
        d = get_dialect(dialect)
        encode = lambda text: list(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        self._filler = encode(self.FILLER)
        if len(self._filler) != 1:
            raise ValueError(f"scripted text needs {self.FILLER!r} to be one token of this tokenizer")
        self._open = encode(d.think_open)
        self._close = encode(f" {d.think_close}\n")
        self._encode = encode
        self._query = (d.query_open, d.query_close)
        self._answer = (d.answer_open, d.answer_close)
        self._eos = tokenizer.eos_token_id

    def call(self, tokens: int, *, topic: int, call: int, last: bool) -> list[int]:
        """``tokens`` ids (more when the tags alone are longer) ending in query ``call`` about ``topic``, or in the
        answer and EOS."""
        if last:
            tail = self._encode(f"{self._answer[0]} \\boxed{{answer {topic}}} {self._answer[1]}") + [self._eos]
        else:
            tail = self._encode(f"{self._query[0]} question {topic} fact {call} {self._query[1]}")
        fill = max(0, tokens - len(self._open) - len(self._close) - len(tail))
        return self._open + self._filler * fill + self._close + tail
