"""A generated world of one-sentence facts, small enough for a tiny policy to learn to search in on a laptop.

Each fact is ``(subject, relation, object)`` with invented names; the corpus has one passage per fact (titled with
the subject, one templated sentence), and each fact gives one question whose answer is the object. A policy that
searches the question finds the subject's passage (its name is the rare term) and answers by copying the object
from the result: the skill the papers train, reduced to what a 0.6M-parameter model can learn on two cores.

- The **bundled world** (:func:`bundled_world`, seed 0) is the main job's task: its questions are split into
  training and held-out validation ones (every 5th), and its corpus is what the policy searches.
- **Practice facts** (:class:`PracticeWorld`) are endless fresh facts over names the bundled world never
  uses: the warm-up teaches the format and the copying on them, so nothing about the bundled world's validation
  questions (or any of its facts) is learned before RL.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SYLLABLES = (
    "ka ve lo ri sa mo du ne ta li ro ba fe gu hi ja ko lu ma ni po qu se tu wa ye zo ar el or an en in on ul ir"
).split()

RELATIONS: dict[str, tuple[str, str]] = {
    # relation: (question, passage sentence)
    "birthplace": ("Where was {s} born?", "{s} was born in {o}."),
    "founder": ("Who founded {s}?", "{s} was founded by {o}."),
    "capital": ("What is the capital of {s}?", "The capital of {s} is {o}."),
    # every sentence names the subject before the object: a 2-layer policy copies what follows a name it matched
    # far more reliably than what precedes it ("The {o} flows through {s}." stayed below half)
    "river": ("Which river flows through {s}?", "{s} lies on the river {o}."),
}

BUNDLED_SEED = 0
BUNDLED_FACTS = 400


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str

    @property
    def question(self) -> str:
        return RELATIONS[self.relation][0].format(s=self.subject)

    @property
    def sentence(self) -> str:
        return RELATIONS[self.relation][1].format(s=self.subject, o=self.object)


def make_name(rng: random.Random) -> str:
    """An invented name of two or three syllables (``Kelvo``, ``Tuyeri``)."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()


def bundled_world() -> list[Fact]:
    """The main job's world: :data:`BUNDLED_FACTS` facts over distinct names, the same on every machine."""
    rng = random.Random(BUNDLED_SEED)
    names: dict[str, None] = {}  # distinct, in the order drawn
    while len(names) < 2 * BUNDLED_FACTS:
        names.setdefault(make_name(rng))
    pairs = iter(names)
    relations = sorted(RELATIONS)
    return [Fact(s, rng.choice(relations), o) for s, o in zip(pairs, pairs)]


def bundled_names() -> frozenset[str]:
    return frozenset(n for f in bundled_world() for n in (f.subject, f.object))


def corpus_rows(facts: list[Fact]) -> list[dict]:
    """One wiki-18-format passage per fact (``"Title"\\ntext``)."""
    return [{"id": f"fact-{i:04d}", "contents": f'"{f.subject}"\n{f.sentence}'} for i, f in enumerate(facts)]


def question_rows(facts: list[Fact]) -> list[dict]:
    """One FlashRAG-format question per fact; ``metadata.supporting_ids`` names its passage."""
    return [
        {
            "id": f"fact-q{i:04d}",
            "question": f.question,
            "golden_answers": [f.object],
            "metadata": {"type": "single_hop", "relation": f.relation, "supporting_ids": [f"fact-{i:04d}"]},
        }
        for i, f in enumerate(facts)
    ]


class PracticeWorld:
    """Endless fresh facts over names outside the bundled world (a new random pairing every time, so the only way
    to answer is to read the result), and the passages a search for one returns: its own and another fact's (of the
    same relation half the time, as BM25's second hit usually is), the right one first most of the time."""

    def __init__(self, seed: int, names: int = 8000) -> None:
        self.rng = random.Random(seed)
        pool = sorted({make_name(self.rng) for _ in range(3 * names)} - bundled_names())
        self.rng.shuffle(pool)
        self.names = pool[:names]

    def fact(self, relation: str | None = None) -> Fact:
        subject, obj = self.rng.sample(self.names, 2)
        return Fact(subject, relation or self.rng.choice(sorted(RELATIONS)), obj)

    def example(self) -> tuple[Fact, list[Fact]]:
        fact = self.fact()
        other = self.fact(fact.relation if self.rng.random() < 0.5 else None)
        hits = [fact, other] if self.rng.random() < 0.8 else [other, fact]
        return fact, hits

    def guess(self, fact: Fact) -> str:
        """A name answered from memory: any name but the fact's own (so wrong)."""
        while (name := self.rng.choice(self.names)) in (fact.subject, fact.object):
            pass
        return name
