"""The ``sim`` rollout backend driven by verl's own AgentLoopWorker and RewardLoopWorker, in-process: our agent
loop searches where the script says, masks what it inserted, and the server records the schedule it ran."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from research_plugin.core.settings import SettingsError
from research_plugin.demo.assets import demo_model
from research_plugin.simulation.gpu_timing import CostModel, ideal_makespan
from research_plugin.simulation.scripted_agent import ScriptShape
from research_plugin.verl.local_rollout import compose_verl_config, make_batch, run_agent_loop

QUESTIONS = [{"question": f"Who founded company {i}?", "golden_answers": [f"Founder {i}"]} for i in range(3)]
SAMPLES = 2
FAST = {"decode_base_ms": 1.0, "decode_per_seq_ms": 0.05, "prefill_per_token_ms": 0.002}


def sim_config(**sim):
    overrides = [f"+actor_rollout_ref.rollout.engine_kwargs.sim.{k}={v}" for k, v in {**FAST, **sim}.items()]
    return compose_verl_config(
        [
            f"actor_rollout_ref.model.path={demo_model()}",
            "actor_rollout_ref.rollout.name=sim",
            "actor_rollout_ref.rollout.full_determinism=True",
            "actor_rollout_ref.rollout.prompt_length=512",
            "actor_rollout_ref.rollout.response_length=4096",
            "actor_rollout_ref.rollout.calculate_log_probs=True",
            "reward.custom_reward_function.path=pkg://research_plugin",
            "reward.custom_reward_function.name=compute_score",
            "+reward.custom_reward_function.reward_kwargs.scheme=research",
            "+search_agent.retriever={type:latency,stages:[[2,0.1]],words:30}",
            "+search_agent.max_searches=4",
            "+search_agent.max_result_tokens=1024",
            *overrides,
        ]
    )


def server_for(config):
    from research_plugin.verl.sim_rollout import SimRolloutServer

    return SimRolloutServer(config.actor_rollout_ref.rollout, config.actor_rollout_ref.model)


def batch():
    b = make_batch(QUESTIONS, "research").repeat(repeat_times=SAMPLES, interleave=True)
    b.non_tensor_batch["priority"] = np.arange(len(b), dtype=np.int64)
    return b


def test_the_agent_loop_follows_the_script_and_masks_what_it_inserted():
    config = sim_config()
    server = server_for(config)
    start = time.perf_counter()
    out = run_agent_loop(config, server, batch())
    wall = time.perf_counter() - start
    nt = out.non_tensor_batch
    stats = server.stats()
    shape = ScriptShape()
    assert sorted(stats["trajectories"]) == list(range(len(QUESTIONS) * SAMPLES))
    for i in range(len(out)):
        calls = shape.calls(0, i)
        turns = stats["trajectories"][i]
        assert [decoded for _, decoded in turns] == calls  # every scripted call, in full
        assert int(nt["num_searches"][i]) == len(calls) - 1 and int(nt["num_failed_searches"][i]) == 0
        assert bool(nt["ended_by_eos"][i])
        # later calls prefill exactly the result blocks the loop appended (the rest is in the prefix cache)
        assert sum(prefill for prefill, _ in turns[1:]) == int(nt["retrieved_tokens"][i])
        length = int(out.batch["attention_mask"][i, -4096:].sum())
        masked = int((out.batch["response_mask"][i, :length] == 0).sum())
        assert masked == int(nt["retrieved_tokens"][i]) > 0
        assert float(nt["agent_cpu_s"][i]) > 0
    # the engine cannot beat its own cost model: the rollout took at least the ideal schedule's time
    turns = [turns for _, turns in sorted(stats["trajectories"].items())]
    assert wall >= 0.9 * ideal_makespan(turns, CostModel(**FAST))


def test_a_prompts_samples_ask_the_same_queries_unless_told_otherwise():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_model())

    def first_queries(**sim):
        out = run_agent_loop(sim_config(**sim), server_for(sim_config(**sim)), batch())
        responses = [tokenizer.decode(out.batch["responses"][i]) for i in range(len(out))]
        return [re.search(r"<search>(.*?)</search>", r).group(1) for r in responses]

    shared = first_queries()
    assert shared[0] == shared[1] != shared[2] == shared[3]  # samples 0, 1 of prompt 0; 2, 3 of prompt 1
    own = first_queries(shared_queries=False)
    assert len(set(own)) == len(own)


def test_the_backend_needs_stable_ids_and_known_settings():
    config = sim_config()
    config.actor_rollout_ref.rollout.full_determinism = False
    with pytest.raises(SettingsError, match="full_determinism=True"):
        server_for(config)
    with pytest.raises(SettingsError, match=r"'decode_base_mss'.*did you mean 'decode_base_ms'"):
        server_for(sim_config(decode_base_mss=1))
    with pytest.raises(SettingsError, match="max_num_seqs"):
        server_for(sim_config(max_num_seqs=0))
