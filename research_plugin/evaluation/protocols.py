"""The papers' evaluation protocols: which metrics each reports, under which names, defined as its code defines
them, and how its LLM judge is asked.

* ``research`` (ReSearch): EM and F1 with SQuAD normalisation, and LLM-as-a-judge (LJ: the judge reasons, then
  gives a JSON judgement, correct or incorrect, of whether the prediction means the same as a gold answer).
* ``r1_searcher`` (R1-Searcher): ACC_R, its Cover-EM (every gold token among the prediction's tokens, in any
  order), and ACC_L (an LLM judge answering True or False), with R1-Searcher's normalisation (punctuation as
  spaces, ``True``/``False`` as yes/no); its rule script also prints EM and F1.
* ``search_r1`` (Search-R1): EM, and sub-EM (the normalised gold is a substring of the normalised prediction),
  with SQuAD normalisation; no judge.

Every row gets all the metrics (``em``, ``f1``, ``cover_em``, ``acc_r``, ``subem``, ``lj``) under the run's
normalisation; the protocol picks the rows of the results table, their names, the default normalisation and the
judge prompt, and its definitions go into ``summary.json`` so two runs can be compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.papers import PAPERS
from ..core.rewards import SCHEMES

DEFINITIONS = {
    "em": "normalised prediction equals a normalised gold answer",
    "f1": "token F1 against the best gold answer (yes/no/noanswer must match exactly)",
    "cover_em": "the gold's tokens appear contiguously, in order, in the prediction",
    "acc_r": "every token of a gold answer is among the prediction's tokens, in any order (R1-Searcher's Cover-EM)",
    "subem": "a normalised gold answer is a substring of the normalised prediction (Search-R1's sub-EM)",
    "lj": "an LLM judge says the prediction means the same as a gold answer",
}

COMMON_ROWS = (
    ("Searches / question", "num_searches", 1, 2),
    ("Response tokens", "response_tokens", 1, 0),
    ("Retrieval recall", "retrieval_recall", 100, 1),
    ("Malformed %", "malformed", 100, 1),
)


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system: str
    user: str
    """Formatted with ``question``, ``golds`` (`` | ``-joined) and ``prediction``."""
    verdict: re.Pattern[str]
    """Searched in the reply; group 1 is a word of ``positive`` or another verdict word."""
    positive: tuple[str, ...]
    max_tokens: int

    def parse(self, reply: str) -> float | None:
        match = self.verdict.search(reply)
        return None if match is None else float(match.group(1).lower() in self.positive)


JUDGE_PROMPTS = {
    p.name: p
    for p in (
        JudgePrompt(
            "yes_no",
            "You grade answers to questions. Reply with a single word: yes or no.",
            "Question: {question}\nGold answers: {golds}\nPredicted answer: {prediction}\n\n"
            "Does the predicted answer mean the same as any of the gold answers? Minor differences in wording, "
            "spelling or detail do not matter. Reply yes or no.",
            re.compile(r"^\W*(yes|no)\b", re.IGNORECASE),
            ("yes",),
            16,
        ),
        JudgePrompt(
            "research",
            "You judge whether a predicted answer to a question is right, given the list of correct answers.",
            "Question: {question}\nCorrect answers: {golds}\nPredicted answer: {prediction}\n\n"
            "The prediction need not match any correct answer word for word, but it must mean the same as at "
            "least one of them. First explain your reasoning in one or two sentences, then reply with a JSON "
            'object: {{"rationale": "...", "judgement": "correct"}} or {{"rationale": "...", '
            '"judgement": "incorrect"}}.',
            re.compile(r'"judgement"\s*:\s*"(correct|incorrect)"', re.IGNORECASE),
            ("correct",),
            512,
        ),
        JudgePrompt(
            "r1_searcher",
            "You check answers against a golden answer.",
            "Question: {question}\nGolden answer: {golds}\nPredicted answer: {prediction}\n\n"
            "Is the predicted answer correct? It is correct when it agrees with the golden answer in meaning and "
            "carries its key information. Reply True if it is correct and False if it is not.",
            re.compile(r"^\W*(true|false)\b", re.IGNORECASE),
            ("true",),
            16,
        ),
    )
}


@dataclass(frozen=True)
class Protocol:
    name: str
    paper: str
    normalization: str
    metrics: tuple[tuple[str, str], ...]
    """(label in the paper's tables, row metric key), in the paper's order."""
    judge_prompt: str

    def table_rows(self) -> tuple[tuple[str, str, int, int], ...]:
        """(label, summary key, scale, decimals) of the results table's rows."""
        return tuple((label, key, 100, 1) for label, key in self.metrics) + COMMON_ROWS

    def describe(self) -> dict:
        return {
            "name": self.name,
            "paper": self.paper,
            "normalization": self.normalization,
            "metrics": {label: f"{key}: {DEFINITIONS[key]}" for label, key in self.metrics},
            "judge_prompt": self.judge_prompt,
        }


PROTOCOLS = {p.name: Protocol(p.name, p.title, p.normalization, p.metrics, p.judge_prompt) for p in PAPERS.values()}
"""Each paper's protocol, by the paper's name (:data:`..core.papers.PAPERS`)."""


def protocol_for_scheme(scheme: str) -> Protocol:
    """The protocol of the paper whose reward ``scheme`` is (by its dialect)."""
    return PROTOCOLS[SCHEMES[scheme].dialect]  # a paper's name is its dialect's
