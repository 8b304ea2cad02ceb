"""The learning check: the main job, shortened to 10 steps, teaches the shipped policy to search and raises its
held-out answer F1 on the fact world.

It is the benchmark's run (``bench/learning.py``: the recipe as it ships, RL seed 1, validation on the 80 held-out
questions before training and after the last step), shared with ``test_cpu_grpo``. The policy is the bytes shipped
in the package, so every machine starts from the same place. The margins asked for are half of what every RL seed of
the benchmark showed by step 10 (``bench/results/learning.json``; a test below holds them to that), and every
retrieved token must have been masked. The negative controls (advantage sign flipped: F1 falls; retrieved tokens
unmasked: caught by the mask count) and the 20-step curves of three RL seeds and two warm-up seeds are the
benchmark's.
"""

from __future__ import annotations

import json
from pathlib import Path

from .main_job import LEARNING_STEPS, load_bench

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "learning.json"
MARGINS = {"f1": 0.15, "num_searches": 0.25}
"""Rise by step 10 the check asks for, of held-out F1 and of searches per question."""


def _rise(curve: list[list[float]], step: int) -> float:
    values = dict(map(tuple, curve))
    return values[step] - values[0]


def test_the_default_learns_to_search_and_raises_held_out_answer_f1(main_job_hf):
    run = load_bench("learning").read_run(main_job_hf["ckpt"] / "metrics.jsonl")
    curves = run["validation"]
    assert [s for s, _ in curves["f1"]] == [0, LEARNING_STEPS]
    for var, margin in MARGINS.items():
        assert _rise(curves[var], LEARNING_STEPS) >= margin, (var, curves)
    # the shipped policy searches on part of the questions only; RL makes it search (nearly) always
    searches = dict(map(tuple, curves["num_searches"]))
    assert searches[0] <= 0.5, curves
    # F1 alone does not tell a run that trained on the retrieved tokens from one that did not: every token the
    # rollout retrieved must have had mask 0
    assert run["masked_tokens"] == run["retrieved_tokens"] > 0, run


def test_every_benchmark_seed_clears_the_margins_twice():
    results = json.loads(RESULTS.read_text())
    runs = [r for r in results["runs"] if r["variant"] == "default" and r.get("warmup_seed", 0) == 0]
    assert len({r["seed"] for r in runs}) >= 3
    for var, margin in MARGINS.items():
        rises = [_rise(r["validation"][var], LEARNING_STEPS) for r in runs]
        assert min(rises) >= 2 * margin, (var, rises)
