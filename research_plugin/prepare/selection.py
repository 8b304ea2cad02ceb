"""Which examples go into the output: eval-set dedupe, seeded sampling, and mixing sources by weight."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from ..core.answer_metrics import normalize_answer
from .formats import QAExample

T = TypeVar("T")


def question_key(question: str) -> str:
    """What two questions must share to count as the same: SQuAD-normalised text."""
    return normalize_answer(question)


def mix_quotas(sizes: Sequence[int], weights: Sequence[float], total: int | None = None) -> list[int]:
    """Rows to take from each source so their shares follow ``weights``.

    ``total`` rows in all (largest-remainder rounding); without it, the largest mix that needs no source to
    give more rows than it has.
    """
    if len(sizes) != len(weights) or not sizes:
        raise ValueError("one weight per source is needed")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"weights must be positive numbers, not {list(weights)}")
    shares = [w / sum(weights) for w in weights]
    auto = total is None
    if auto:
        total = min(math.floor(n / s + 1e-9) for n, s in zip(sizes, shares))
    while True:
        exact = [total * s for s in shares]
        quotas = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - quotas[i], reverse=True)
        for i in by_remainder[: total - sum(quotas)]:
            quotas[i] += 1
        short = [i for i, (q, n) in enumerate(zip(quotas, sizes)) if q > n]
        if not short:
            return quotas
        if not auto:
            i = short[0]
            raise ValueError(
                f"the mix of {total} rows needs {quotas[i]} from source {i + 1}, which has {sizes[i]}; "
                "lower --sample or that source's weight"
            )
        total -= 1


def _pick(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` of ``range(n)`` without replacement, in ascending order."""
    return sorted(rng.choice(n, size=k, replace=False).tolist())


def select(
    pools: Sequence[Sequence[T]], *, weights: Sequence[float] | None, sample: int | None, seed: int
) -> list[list[T]]:
    """The examples kept from each pool, in file order.

    No weights: all rows, or ``sample`` rows drawn uniformly from all pools together. Weights: each pool's
    share of the mix (of ``sample`` rows, or the largest mix the pools allow). Same inputs and seed, same rows.
    """
    rng = np.random.default_rng(seed)
    if weights is None:
        if sample is None:
            return [list(p) for p in pools]
        flat = [(i, ex) for i, pool in enumerate(pools) for ex in pool]
        if sample > len(flat):
            raise ValueError(f"--sample {sample} asks for more rows than the {len(flat)} there are")
        chosen = [flat[j] for j in _pick(len(flat), sample, rng)]
        return [[ex for i, ex in chosen if i == k] for k in range(len(pools))]
    quotas = mix_quotas([len(p) for p in pools], weights, sample)
    return [[pool[j] for j in _pick(len(pool), q, rng)] for pool, q in zip(pools, quotas)]


def drop_known(examples: Sequence[QAExample], known: set[str]) -> list[QAExample]:
    """``examples`` whose question (by :func:`question_key`) is not in ``known``."""
    return [ex for ex in examples if question_key(ex.question) not in known]
