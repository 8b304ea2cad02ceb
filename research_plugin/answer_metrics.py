"""Answer metrics as the official SQuAD / HotpotQA evaluation scripts compute them: EM, token F1, cover-EM.

Normalisation (``punct="remove"``, the official one): lowercase, delete punctuation, drop the articles
a/an/the as whole words, fold whitespace. ``punct="space"`` is R1-Searcher's variant: punctuation
(plus the quote marks ‘ ’ ´ `) becomes a space instead, so "U.S.A." gives "u s a" rather than "usa".

Every metric takes a prediction (None scores 0) and one or more gold answers, and returns the maximum
over the golds; no gold answers score 0.
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


def normalize_answer(s: str, punct: str = "remove") -> str:
    """SQuAD normalisation; ``punct`` is "remove" (official) or "space" (R1-Searcher)."""
    s = s.lower()
    if punct == "remove":
        s = "".join(ch for ch in s if ch not in _PUNCT)
    elif punct == "space":
        s = "".join(" " if ch in _R1_PUNCT else ch for ch in s)
    else:
        raise ValueError(f"punct must be 'remove' or 'space', not {punct!r}")
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


def exact_match(pred: str | None, golds: Any, punct: str = "remove") -> float:
    """1.0 if the normalised prediction equals some normalised gold answer."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred, punct)
    return float(any(p == normalize_answer(g, punct) for g in as_gold_list(golds)))


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


def precision_recall_f1(pred: str | None, golds: Any, punct: str = "remove") -> tuple[float, float, float]:
    """(precision, recall, F1) against the gold answer with the highest F1."""
    if pred is None:
        return 0.0, 0.0, 0.0
    p = normalize_answer(pred, punct)
    scores = [_prf(p, normalize_answer(g, punct)) for g in as_gold_list(golds)]
    return max(scores, key=lambda s: s[2], default=(0.0, 0.0, 0.0))


def f1_score(pred: str | None, golds: Any, punct: str = "remove") -> float:
    """Token F1, the maximum over gold answers."""
    return precision_recall_f1(pred, golds, punct)[2]


def cover_exact_match(pred: str | None, golds: Any, punct: str = "remove") -> float:
    """1.0 if some normalised gold string occurs in the normalised prediction on token boundaries.

    That is, the gold's tokens appear contiguously and in order among the prediction's tokens
    ("eiffel tower" covers "eiffel tower in paris"; "tower" does not cover "towers"). A gold that
    normalises to the empty string is covered only by an empty prediction.
    """
    if pred is None:
        return 0.0
    p = f" {normalize_answer(pred, punct)} "
    return float(any(f" {normalize_answer(g, punct)} " in p for g in as_gold_list(golds)))
