"""Answer metrics as the papers' evaluation code computes them: EM, token F1, and three kinds of coverage.

Normalisations (``normalization=``):

* ``squad`` (the official SQuAD / HotpotQA one, ReSearch's and Search-R1's): lowercase, delete punctuation, drop
  the articles a/an/the as whole words, fold whitespace;
* ``space``: punctuation (plus the quote marks ‘ ’ ´ `) becomes a space instead, so "U.S.A." gives "u s a"
  rather than "usa";
* ``r1_searcher`` (R1-Searcher's code): ``space``, after mapping the exact strings ``True`` / ``False`` to
  ``yes`` / ``no``.

Metrics (each takes a prediction, None scoring 0, and one or more gold answers, and returns the maximum over the
golds; no gold answers score 0):

* :func:`exact_match` (EM) and :func:`f1_score` (token F1, with HotpotQA's yes/no/noanswer rule);
* :func:`cover_exact_match` (``cover_em``): the gold's tokens appear contiguously, in order, in the prediction;
* :func:`token_cover_match` (``acc_r``, R1-Searcher's Cover-EM / ACC_R): every gold token is among the
  prediction's tokens, in any order;
* :func:`substring_exact_match` (``subem``, Search-R1's sub-EM): the normalised gold is a substring of the
  normalised prediction, even inside a word.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

_PUNCT = frozenset(string.punctuation)
_R1_PUNCT = _PUNCT | frozenset("‘’´`")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_YES_NO = ("yes", "no", "noanswer")
_GOLD_KEYS = ("target", "golden_answers", "answers")
_BOOLS = {"True": "yes", "False": "no"}
NORMALIZATIONS = ("squad", "space", "r1_searcher")


def normalize_answer(s: str, normalization: str = "squad") -> str:
    """``s`` normalised as :data:`NORMALIZATIONS` name it (see the module docstring)."""
    if normalization == "r1_searcher":
        s = _BOOLS.get(s, s)
    elif normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}")
    s = s.lower()
    if normalization == "squad":
        s = "".join(ch for ch in s if ch not in _PUNCT)
    else:
        s = "".join(" " if ch in _R1_PUNCT else ch for ch in s)
    return " ".join(_ARTICLES.sub(" ", s).split())


def as_gold_list(golds: Any) -> list[str]:
    """Gold answers as a flat list of strings, from a string, list/tuple, numpy array or ``{"target": ...}``."""
    if golds is None:
        return []
    if isinstance(golds, (str, bytes)):
        return [golds.decode("utf-8", "replace") if isinstance(golds, bytes) else golds]
    if isinstance(golds, Mapping):
        key = next((k for k in _GOLD_KEYS if k in golds), None)
        return as_gold_list(golds[key]) if key else []
    if isinstance(golds, (list, tuple, np.ndarray)):
        return [g for item in golds for g in as_gold_list(item)]
    return [str(golds)]


def exact_match(pred: str | None, golds: Any, normalization: str = "squad") -> float:
    """1.0 if the normalised prediction equals some normalised gold answer."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred, normalization)
    return float(any(p == normalize_answer(g, normalization) for g in as_gold_list(golds)))


def _prf(p: str, g: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of normalised strings, with HotpotQA's yes/no/noanswer rule."""
    if p != g and (p in _YES_NO or g in _YES_NO):
        return 0.0, 0.0, 0.0
    p_toks, g_toks = p.split(), g.split()
    same = sum((Counter(p_toks) & Counter(g_toks)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision, recall = same / len(p_toks), same / len(g_toks)
    return precision, recall, 2 * precision * recall / (precision + recall)


def precision_recall_f1(pred: str | None, golds: Any, normalization: str = "squad") -> tuple[float, float, float]:
    """(precision, recall, F1) against the gold answer with the highest F1."""
    if pred is None:
        return 0.0, 0.0, 0.0
    p = normalize_answer(pred, normalization)
    scores = [_prf(p, normalize_answer(g, normalization)) for g in as_gold_list(golds)]
    return max(scores, key=lambda s: s[2], default=(0.0, 0.0, 0.0))


def f1_score(pred: str | None, golds: Any, normalization: str = "squad") -> float:
    """Token F1, the maximum over gold answers."""
    return precision_recall_f1(pred, golds, normalization)[2]


def cover_exact_match(pred: str | None, golds: Any, normalization: str = "squad") -> float:
    """1.0 if some normalised gold string occurs in the normalised prediction on token boundaries.

    That is, the gold's tokens appear contiguously and in order among the prediction's tokens
    ("eiffel tower" covers "eiffel tower in paris"; "tower" does not cover "towers"). A gold that
    normalises to the empty string is covered only by an empty prediction.
    """
    if pred is None:
        return 0.0
    p = f" {normalize_answer(pred, normalization)} "
    return float(any(f" {normalize_answer(g, normalization)} " in p for g in as_gold_list(golds)))


def token_cover_match(pred: str | None, golds: Any, normalization: str = "squad") -> float:
    """1.0 if every token of some normalised gold is among the normalised prediction's tokens, in any order and
    counted once (R1-Searcher's Cover-EM, its ACC_R: "madison james" covers "james madison"). As in their code
    (which splits on single spaces, so an empty string is the one token ``""``), a gold that normalises to nothing
    ("A", "The") is covered only by a prediction that normalises to nothing."""
    if pred is None:
        return 0.0
    p = set(normalize_answer(pred, normalization).split()) or {""}
    return float(
        any(all(t in p for t in normalize_answer(g, normalization).split() or [""]) for g in as_gold_list(golds))
    )


def substring_exact_match(pred: str | None, golds: Any, normalization: str = "squad") -> float:
    """1.0 if some normalised gold is a substring of the normalised prediction (Search-R1's sub-EM,
    ``subem_check``: "james madisons" covers "james madison"; an empty gold is in every prediction)."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred, normalization)
    return float(any(normalize_answer(g, normalization) in p for g in as_gold_list(golds)))
