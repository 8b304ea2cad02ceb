"""``bench/learning.py``'s parts that decide its verdict, and its negative control's reward (the benchmark itself
trains for minutes per run; ``test_learning.py`` runs it, shortened, on the default)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(variant, seed, f1s):
    return {"variant": variant, "seed": seed, "validation": {"f1": [[5 * i, f] for i, f in enumerate(f1s)]}}


def test_verdict_is_the_issue_criterion():
    learning = _load("learning")
    runs = [_run("default", s, [0.1, 0.2, x]) for s, x in ((1, 0.40), (2, 0.42), (3, 0.38))]
    runs += [_run("sign_flipped", s, [0.1, x]) for s, x in ((1, 0.0), (2, 0.3), (3, 0.1))]
    runs += [_run("unmasked", s, [0.1, x]) for s, x in ((1, 0.12), (2, 0.11), (3, 0.12))]
    v = learning.verdict(runs)
    assert v["default"]["rise"] == pytest.approx(0.3) and v["default"]["seed_spread"] == pytest.approx(0.02)
    assert v["default"]["learns"]
    assert not v["sign_flipped"]["learns"]  # F1 falls on average
    assert not v["unmasked"]["learns"]  # rises by 0.017, less than 3 x its spread (3 x 0.0058)
    assert not learning.verdict([_run("default", 1, [0.0, 0.5])])["default"]["learns"]  # one seed: no spread


def test_negated_reward_flips_the_score_only():
    from research_plugin import compute_score

    negated = _load("negated_reward").compute_score
    text = "<think> t </think> <answer> \\boxed{Paris} </answer>"
    plain = compute_score("demo", text, ["Paris"], {"ended_by_eos": True})
    flipped = negated("demo", text, ["Paris"], {"ended_by_eos": True})
    assert plain["score"] > 0 and flipped["score"] == -plain["score"]
    assert {k: v for k, v in flipped.items() if k != "score"} == {k: v for k, v in plain.items() if k != "score"}
