"""The simulated engine's timing (``research_plugin.simulation``): literal cases of the cost model, the
continuous-batching scheduler and the two references a measured rollout is compared with."""

from __future__ import annotations

import pytest

from research_plugin.simulation.gpu_timing import (
    Chunk,
    ContinuousBatcher,
    CostModel,
    ideal_makespan,
    synchronous_makespan,
)
from research_plugin.simulation.scripted_agent import ScriptedText, ScriptShape

COST = CostModel(decode_base_ms=10.0, decode_per_seq_ms=1.0, prefill_per_token_ms=0.1, max_num_seqs=2)


def test_a_lone_request_pays_its_prefill_once_and_a_step_per_token():
    b = ContinuousBatcher(COST)
    b.submit("a", prefill=100, decode=5)
    b.run_until_idle()
    assert b.now == pytest.approx((5 * 11.0 + 100 * 0.1) / 1000)


def test_requests_that_run_together_share_each_step():
    b = ContinuousBatcher(COST)
    b.submit("a", 0, 4)
    b.submit("b", 0, 2)
    chunk = b.plan()
    assert (chunk.steps, chunk.step_s) == (2, pytest.approx(0.012))  # two running: 10 + 2 x 1 ms a step
    assert b.advance() == ["b"]
    b.plan()
    assert b.advance() == ["a"]
    assert b.now == pytest.approx(2 * 0.012 + 2 * 0.011)


def test_a_full_engine_makes_the_next_request_wait():
    b = ContinuousBatcher(COST)
    for key in "abc":
        b.submit(key, 0, 3)
    b.plan()
    assert b.running == 2 and b.advance() == ["a", "b"]
    b.plan()
    assert b.advance() == ["c"]
    assert b.now == pytest.approx(3 * 0.012 + 3 * 0.011)
    assert b.max_running == 2


def test_a_request_that_arrives_later_starts_at_its_arrival():
    b = ContinuousBatcher(COST)
    b.submit("a", 0, 1, at=5.0)
    b.run_until_idle()
    assert b.now == pytest.approx(5.011)
    assert b.busy_s == pytest.approx(0.011)


def test_an_arrival_joins_at_the_next_iteration_boundary():
    chunk = Chunk(start=1.0, first_s=0.5, step_s=0.1, steps=10)
    assert chunk.steps_before(1.2) == 1  # during the first (prefill) iteration
    assert chunk.steps_before(1.55) == 2
    assert chunk.steps_before(1.6) == 2
    assert chunk.steps_before(9.0) == 10
    assert chunk.end(2) == pytest.approx(1.6)


def test_the_ideal_runs_each_trajectorys_turns_back_to_back():
    one = [[(0, 3), (10, 2)]]
    assert ideal_makespan(one, COST) == pytest.approx((3 * 11 + 10 * 0.1 + 2 * 11) / 1000)


def test_synchronous_turns_equal_the_ideal_when_every_turn_is_alike_and_searches_are_free():
    same = [[(0, 4), (0, 4)] for _ in range(2)]
    assert synchronous_makespan([same], COST, 0.0) == pytest.approx(ideal_makespan(same, COST))


def test_synchronous_turns_wait_for_the_slowest_trajectory_and_the_searches():
    uneven = [[(0, 1), (0, 9)], [(0, 9), (0, 1)]]
    ideal = ideal_makespan(uneven, COST)
    sync = synchronous_makespan([uneven], COST, 0.5)
    # each turn waits for its 9-token call, the first turn's searches take 0.5 s
    assert sync == pytest.approx(2 * (0.012 + 8 * 0.011) + 0.5)
    assert ideal == pytest.approx(10 * 0.012)  # both run 10 steps side by side
    # replicas: a turn ends when the slowest replica's batch ends
    assert synchronous_makespan([[[(0, 2)]], [[(0, 6)]]], COST, 0.0) == pytest.approx(6 * 0.011)


def test_a_bad_cost_model_is_refused():
    with pytest.raises(ValueError, match="max_num_seqs"):
        CostModel(max_num_seqs=0)


def test_scripts_depend_on_seed_and_index_only():
    shape = ScriptShape()
    calls = shape.calls(0, 7)
    assert calls == ScriptShape().calls(0, 7) and 3 <= len(calls) <= 5
    assert all(1 <= c <= shape.max_call_tokens for c in calls)
    searches = [len(shape.calls(0, i)) - 1 for i in range(400)]
    assert set(searches) == {2, 3, 4}
    assert shape.calls(1, 7) != calls


def test_scripted_text_is_the_length_asked_and_ends_in_the_dialects_tags():
    from transformers import AutoTokenizer

    from research_plugin.demo.assets import demo_model

    tokenizer = AutoTokenizer.from_pretrained(demo_model())
    text = ScriptedText(tokenizer, "research")
    query = text.call(120, topic=3, call=1, last=False)
    assert len(query) == 120
    assert tokenizer.decode(query).endswith("<search> question 3 fact 1 </search>")
    answer = text.call(50, topic=3, call=2, last=True)
    assert len(answer) == 50 and answer[-1] == tokenizer.eos_token_id
    assert "<answer> \\boxed{answer 3} </answer>" in tokenizer.decode(answer)
    assert len(text.call(1, topic=3, call=0, last=False)) > 1  # the tags alone are longer: never cut
