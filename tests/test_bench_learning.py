"""``bench/learning.py``'s parts that decide its verdict, and its negative control's reward (the benchmark itself
trains for minutes per run; ``test_learning.py`` runs it, shortened, on the default)."""

from __future__ import annotations

import pytest

from .main_job import load_bench


def _curve(xs):
    return [[5 * i, x] for i, x in enumerate(xs)]


def _run(variant, seed, f1s, searches, masked=100, retrieved=100, warmup=0):
    return {
        "variant": variant, "seed": seed, "warmup_seed": warmup,
        "validation": {"f1": _curve(f1s), "num_searches": _curve(searches)},
        "masked_tokens": masked, "retrieved_tokens": retrieved,
    }  # fmt: skip


def test_the_verdict_is_the_issues_targets():
    learning = load_bench("learning")
    runs = [
        _run("default", 1, [0.2, 0.5, 0.6], [0.25, 0.9, 1.0]),
        _run("default", 2, [0.2, 0.4, 0.44], [0.25, 0.8, 0.95]),  # rises by 0.24 < 0.25
        _run("default", 3, [0.2, 0.6, 0.7], [0.55, 1.0, 1.0]),  # searched more than half at the start
        _run("default", 4, [0.2, 0.6, 0.7], [0.25, 0.9, 0.85]),  # ends below 0.9 searches
        _run("default", 5, [0.2, 0.6, 0.7], [0.25, 1.0, 1.0], masked=90),  # a retrieved token kept mask 1
        _run("sign_flipped", 1, [0.2, 0.1, 0.0], [0.25, 0.1, 0.0]),
        _run("sign_flipped", 2, [0.2, 0.3, 0.2], [0.25, 0.5, 0.3]),  # does not fall
        _run("unmasked", 1, [0.2, 0.6, 0.7], [0.25, 1.0, 1.0], masked=0),
        _run("unmasked", 2, [0.2, 0.6, 0.7], [0.25, 1.0, 1.0]),  # the mask count would not tell it
        _run("default", 1, [0.2, 0.5, 0.6], [0.25, 0.9, 1.0], warmup=1),
    ]
    v = learning.verdict(runs)
    per_seed = {
        variant: {s: j["meets_target"] for s, j in g["per_seed"].items()} for variant, g in v["warmup 0"].items()
    }
    assert per_seed == {
        "default": {1: True, 2: False, 3: False, 4: False, 5: False},
        "sign_flipped": {1: True, 2: False},
        "unmasked": {1: True, 2: False},
    }
    assert v["warmup 0"]["default"]["per_seed"][1]["f1_rise"] == pytest.approx(0.4)
    assert not v["warmup 0"]["default"]["all_seeds_meet_target"] and v["warmup 1"]["default"]["all_seeds_meet_target"]


def test_negated_reward_flips_the_score_only():
    from research_plugin import compute_score

    negated = load_bench("negated_reward").compute_score
    text = "<think> t </think> <answer> \\boxed{Paris} </answer>"
    plain = compute_score("demo", text, ["Paris"], {"ended_by_eos": True})
    flipped = negated("demo", text, ["Paris"], {"ended_by_eos": True})
    assert plain["score"] > 0 and flipped["score"] == -plain["score"]
    assert {k: v for k, v in flipped.items() if k != "score"} == {k: v for k, v in plain.items() if k != "score"}
