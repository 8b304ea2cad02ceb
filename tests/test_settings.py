"""Every setting a user writes is checked where it is read: one test per kind of mistake (an unknown key, with
"did you mean"; a wrong type; a value out of range; malformed JSON or YAML from a variable or a file), through
each reader (the agent's, the reward's, OpenRLHF's settings and executor, a retriever spec, verl's start-up check
of a composed recipe and verl's own launcher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from research_plugin.core.rewards import check_reward_kwargs, compute_score, scheme_options
from research_plugin.core.search_step import SearchAgentConfig
from research_plugin.core.settings import SettingsError, read_mapping_file
from research_plugin.recipes import recipes_dir
from research_plugin.retrieval import check_spec

from .recipe_config import compose_recipe as compose

RIGHT = "<think>a</think><answer>\\boxed{Paris}</answer>"


def raises(match: str):
    return pytest.raises(SettingsError, match=match)


# --- unknown keys, with "did you mean" ----------------------------------------------------------------------------


def test_an_unknown_agent_setting_names_the_close_one_and_where_it_came_from():
    with raises(r"^row 7: extra_info.search: unknown search_agent settings 'top_kk' \(did you mean 'top_k'\?\)"):
        SearchAgentConfig.merged({"top_k": 2}, {"top_kk": 3}, where=["recipe", "row 7: extra_info.search"])
    with raises(r"unknown search_agent settings 'xyz'; known: dialect, "):  # nothing close: no suggestion
        SearchAgentConfig.merged({"xyz": 1})


def test_an_unknown_reward_option_is_an_error_not_a_default():
    # it used to be dropped: the run trained with format_penalty 2.0
    with raises(r"unknown reward options 'format_penalti' \(did you mean 'format_penalty'\?\)"):
        compute_score("nq", RIGHT, ["Paris"], scheme="r1_stage2", format_penalti=0.5)
    with raises(r"^file a.yaml: reward: unknown reward options 'schme' \(did you mean 'scheme'\?\)"):
        check_reward_kwargs({"schme": "research"}, "file a.yaml: reward")
    with raises(r"unknown reward scheme 'r1_stage' \(did you mean 'r1_stage2'\?\)"):
        scheme_options("r1_stage")
    with raises(r"unknown metric 'cover_me' \(did you mean 'cover_em'\?\)"):
        scheme_options("research", metric="cover_me")


def test_verls_own_reward_keyword_arguments_are_accepted():
    # what verl 0.9.1's reward managers add when a reward-model router is set
    out = compute_score("nq", RIGHT, ["Paris"], reward_router_address="10.0.0.1:8000", reward_model_tokenizer=None)
    assert out["score"] == 1.0


def test_an_unknown_retriever_option_or_type():
    with raises(r"^s: unknown bm25 retriever options 'corpuss' \(did you mean 'corpus'\?\)"):
        check_spec({"type": "bm25", "corpuss": "two_hop"}, "s")
    with raises(r"unknown retriever type 'bm2' \(did you mean 'bm25'\?\)"):
        check_spec({"type": "bm2"}, "s")
    with raises(r"^search_agent settings: retriever: index: unknown bm25 retriever options 'stem' \(did you mean"):
        SearchAgentConfig.merged({"retriever": {"type": "ray", "index": {"type": "bm25", "corpus": "x", "stem": 1}}})
    assert check_spec({"type": "http", "url": "http://h/retrieve", "timeout": "2.5"}) == {
        "type": "http",
        "url": "http://h/retrieve",
        "timeout": 2.5,
    }


# --- wrong types: YAML / CLI text coerced strictly, anything else rejected ----------------------------------------


def test_text_is_read_strictly_as_the_declared_type():
    cfg = SearchAgentConfig.merged({"top_k": "3", "mask_results": "False", "search_timeout": "2.5"})
    assert (cfg.top_k, cfg.mask_results, cfg.search_timeout) == (3, False, 2.5)
    with raises(r"top_k must be an integer, not 'three'"):
        SearchAgentConfig.merged({"top_k": "three"})
    with raises(r"top_k must be an integer, not 3.5"):
        SearchAgentConfig.merged({"top_k": 3.5})
    with raises(r"top_k must be an integer, not True"):
        SearchAgentConfig.merged({"top_k": True})
    with raises(r"mask_results must be true or false, not 'no'"):
        SearchAgentConfig.merged({"mask_results": "no"})
    with raises(r"dialect must be a string, not 3"):
        SearchAgentConfig.merged({"dialect": 3})
    with raises(r"k1 must be a finite number, not 'high'"):
        check_spec({"type": "lucene", "index_dir": "x", "k1": "high"})


def test_opens_think_false_as_text_means_false_for_the_reward():
    # R1-Searcher's format: a response that starts inside a think block is well formed only when the prompt opened
    # it. "false" used to be read as unset by the reward (and as true by the agent)
    text = "x</think><answer>\\boxed{Paris}</answer>"
    opened = compute_score("nq", text, ["Paris"], scheme="r1_stage2", opens_think="true")
    closed = compute_score("nq", text, ["Paris"], scheme="r1_stage2", opens_think="false")
    assert (opened["format"], closed["format"]) == (1.0, 0.0)
    assert compute_score("nq", text, ["Paris"], scheme="r1_stage2", extra_info={"opens_think": "false"})["format"] == 0
    with raises(r"opens_think must be true or false, not 'maybe'"):
        compute_score("nq", text, ["Paris"], scheme="r1_stage2", opens_think="maybe")
    with raises(r"extra_info\['opens_think'\] must be true or false, not 'maybe'"):
        compute_score("nq", text, ["Paris"], scheme="r1_stage2", extra_info={"opens_think": "maybe"})
    assert check_reward_kwargs({"scheme": "r1_stage2", "opens_think": "false"}, "w") == {
        "scheme": "r1_stage2",
        "opens_think": False,
    }


# --- out of range --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, bound",
    [
        ("top_k", 0, ">= 1"),
        ("max_searches", -1, ">= 0"),
        ("max_result_tokens", "0", ">= 1"),
        ("search_timeout", 0, "> 0"),
    ],
)
def test_a_value_out_of_range_says_the_bound(key, value, bound):
    with raises(rf"^file a.yaml: search_agent: {key} out of range: must be {bound}, not"):
        SearchAgentConfig.merged({key: value}, where="file a.yaml: search_agent")


def test_a_value_out_of_its_choices():
    with raises(r"unknown prompt_format 'chatt' \(did you mean 'chat'\?\); known: auto, chat, raw"):
        SearchAgentConfig.merged({"prompt_format": "chatt"})
    with raises(r"unknown dialect 'reserch' \(did you mean 'research'\?\)"):
        SearchAgentConfig.merged({"dialect": "reserch"})


# --- malformed files and variables ---------------------------------------------------------------------------------


def test_malformed_settings_files_name_the_file(tmp_path):
    bad_json = tmp_path / "agent.json"
    bad_json.write_text('{"search_agent": {"top_k": 3,}}')
    with raises(rf"^file {bad_json}: malformed JSON at line 1 column 30"):
        read_mapping_file(bad_json)
    bad_yaml = tmp_path / "agent.yaml"
    bad_yaml.write_text("search_agent: {top_k: 3\n")
    with raises(rf"^file {bad_yaml}: malformed YAML"):
        read_mapping_file(bad_yaml)
    listed = tmp_path / "list.yaml"
    listed.write_text("- top_k: 3\n")
    with raises(r"must be a mapping of settings, not \[\{'top_k': 3\}\]"):
        read_mapping_file(listed)
    with raises(rf"^file {tmp_path / 'none.yaml'}: cannot read it: No such file"):
        read_mapping_file(tmp_path / "none.yaml")


# --- OpenRLHF: the settings loader and the executor OpenRLHF builds with no arguments ------------------------------

openrlhf_agent = pytest.importorskip("research_plugin.openrlhf.agent")


def test_openrlhf_malformed_json_names_the_variable_or_the_file(tmp_path):
    env = {openrlhf_agent.JSON_ENV: '{"reward": {"scheme": "research"'}
    with raises(r"^environment variable RESEARCH_PLUGIN_AGENT_JSON: malformed JSON at line 1 column 33"):
        openrlhf_agent.load_settings(env)
    path = tmp_path / "agent.json"
    path.write_text("{'search_agent': {}}")
    with raises(rf"^file {path} \(RESEARCH_PLUGIN_AGENT_CONFIG\): malformed JSON at line 1 column 2"):
        openrlhf_agent.load_settings({openrlhf_agent.CONFIG_ENV: str(path)})


def test_openrlhf_settings_are_checked_and_converted(tmp_path):
    path = tmp_path / "agent.yaml"
    path.write_text(
        "search_agent: {top_k: '3'}\nreward: {scheme: r1_stage2, format_penalty: '0.5'}\nopens_think: 'false'\n"
    )
    s = openrlhf_agent.load_settings({openrlhf_agent.CONFIG_ENV: str(path)})
    assert (s.search_agent, s.reward, s.opens_think) == (
        {"top_k": 3},
        {"scheme": "r1_stage2", "format_penalty": 0.5},
        False,
    )
    where = rf"^file {path} \(RESEARCH_PLUGIN_AGENT_CONFIG\)"
    for text, match in [
        ("search_agent: {top_kk: 3}\n", r": search_agent: unknown search_agent settings 'top_kk' \(did you mean"),
        ("reward: {format_penalti: 0.5}\n", r": reward: unknown reward options 'format_penalti' \(did you mean"),
        ("opens_thinks: true\n", r": unknown agent settings 'opens_thinks' \(did you mean 'opens_think'\?\)"),
        ("opens_think: 'yes please'\n", r": opens_think must be true or false, not 'yes please'"),
        ("search_agent: {top_k: 0}\n", r": search_agent: top_k out of range"),
        ("search_agent: [top_k]\n", r": search_agent: must be a mapping of settings"),
    ]:
        path.write_text(text)
        with raises(where + match):
            openrlhf_agent.load_settings({openrlhf_agent.CONFIG_ENV: str(path)})


def test_openrlhfs_executor_fails_when_built_not_in_an_episode(monkeypatch):
    monkeypatch.delenv(openrlhf_agent.CONFIG_ENV, raising=False)
    monkeypatch.setenv(openrlhf_agent.JSON_ENV, json.dumps({"search_agent": {"top_k": "three"}}))
    with raises(r"^environment variable RESEARCH_PLUGIN_AGENT_JSON: search_agent: top_k must be an integer"):
        openrlhf_agent.AgentExecutor(reap_shared_memory=False)
    monkeypatch.setenv(openrlhf_agent.JSON_ENV, json.dumps({"search_agent": {"top_k": "3"}}))
    assert openrlhf_agent.AgentExecutor(reap_shared_memory=False).settings.search_agent == {"top_k": 3}


# --- verl: the start-up check of a composed recipe, and verl's launcher ---------------------------------------------


def test_verl_start_up_check_of_the_shipped_recipe():
    from research_plugin.verl.config_check import check_config

    check_config(compose("tiny_cpu_grpo"))  # the recipe as shipped passes
    for override, match in [
        ("+search_agent.top_kk=3", r"search_agent: unknown search_agent settings 'top_kk' \(did you mean 'top_k'"),
        ("search_agent.top_k=0", r"search_agent: top_k out of range: must be >= 1, not 0"),
        ("search_agent.retriever.type=bm2", r"search_agent: retriever: unknown retriever type 'bm2'"),
        (
            "+reward.custom_reward_function.reward_kwargs.format_penalti=0.5",
            r"reward.custom_reward_function.reward_kwargs: unknown reward options 'format_penalti' \(did you mean",
        ),
        (
            "+reward.custom_reward_function.reward_kwargs.opens_think=nope",
            r"reward.custom_reward_function.reward_kwargs: opens_think must be true or false, not 'nope'",
        ),
    ]:
        with raises(r"^verl config \(recipe / command line\): " + match):
            check_config(compose("tiny_cpu_grpo", [override]))


def test_verl_start_up_check_reads_the_agent_loop_config_file(tmp_path):
    from research_plugin.verl.config_check import check_config

    path = tmp_path / "loops.yaml"
    path.write_text("- name: search_agent\n  _target_: research_plugin.verl.agent_loop.SearchAgentLoop\n  topk: 2\n")
    config = compose("tiny_cpu_grpo", [f"actor_rollout_ref.rollout.agent.agent_loop_config_path={path}"])
    with raises(rf"^file {path} .*: entry 'search_agent': unknown search_agent settings 'topk' \(did you mean"):
        check_config(config)


def test_a_reward_function_that_is_not_ours_keeps_its_kwargs():
    from research_plugin.verl.config_check import check_config

    check_config(
        compose(
            "tiny_cpu_grpo",
            ["reward.custom_reward_function.path=my_reward.py", "+reward.custom_reward_function.reward_kwargs.alpha=1"],
        )
    )


def test_verls_validate_config_runs_the_check():
    """The hook is in place in any process that imported verl: ``main_ppo`` calls this very function."""
    import verl  # noqa: F401 - loads the plugin
    from verl.utils.config import validate_config

    assert getattr(validate_config, "_research_plugin_checks", False)
    with raises("top_kk"):
        validate_config(
            compose("tiny_cpu_grpo", ["+search_agent.top_kk=3"]), use_reference_policy=False, use_critic=False
        )


def test_verls_launcher_stops_at_once_on_a_misspelled_agent_setting():
    start = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "verl.trainer.main_ppo",
            "--config-path",
            str(recipes_dir()),
            "--config-name",
            "tiny_cpu_grpo",
            "+search_agent.top_kk=3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    seconds = time.monotonic() - start
    assert out.returncode != 0
    assert "unknown search_agent settings 'top_kk' (did you mean 'top_k'?)" in out.stderr, out.stderr[-3000:]
    assert out.stderr.count("top_kk") <= 3  # once (Hydra may echo the override), not per trajectory
    assert "ray init" not in out.stdout  # failed before Ray started
    assert seconds < 120, seconds
