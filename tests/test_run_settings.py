"""A training run's folder given to ``research-plugin eval`` / ``demo`` rolls out with the run's own search, reward
and length settings (``research_plugin.verl.run_settings``), unless a flag overrides one, and says which it used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from research_plugin.verl.run_settings import RECORD, run_settings_for

from .recipe_config import compose_recipe

RECORDED = {
    "search_agent": {
        "dialect": "research",
        "top_k": 2,
        "max_searches": 4,
        "max_result_tokens": 192,
        "max_query_chars": 512,
        "search_timeout": 60.0,
        "retriever": {"type": "bm25", "corpus": "/data/corpus.jsonl"},
        "prompt_format": "auto",
        "mask_results": True,
    },
    "reward_kwargs": {"scheme": "research", "format_penalty": 0.5},
    "prompt_length": 384,
    "response_length": 256,
    "val_files": ["/data/val.parquet"],
}


def make_run(root: Path, record: dict | None = RECORDED, step: int = 3) -> Path:
    """A verl run folder: a Hugging Face copy at ``global_step_<step>`` and (unless None) the plugin's record."""
    hf = root / f"global_step_{step}" / "actor" / "huggingface"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    if record is not None:
        (root / RECORD).write_text(json.dumps(record))
    return root


def test_the_record_holds_the_recipes_search_reward_and_length_settings():
    from research_plugin.demo.assets import fact_world, register_resolvers
    from research_plugin.verl.run_settings import settings_of

    register_resolvers()
    config = compose_recipe("tiny_cpu_grpo", ["search_agent.top_k=3"])
    got = settings_of(config)
    assert got["search_agent"] == {
        "dialect": "research",
        "top_k": 3,  # the command line's override, as the run used it
        "max_searches": 4,
        "max_result_tokens": 192,
        "max_query_chars": 512,  # defaults filled in: what the loop used, whatever later versions default to
        "search_timeout": 60.0,
        "retriever": {"type": "bm25", "corpus": fact_world("corpus")},
        "prompt_format": "auto",
        "mask_results": True,
    }
    assert got["reward_kwargs"] == {"scheme": "research"}
    assert (got["prompt_length"], got["response_length"]) == (384, 256)
    assert got["val_files"] == [fact_world("val")]


def test_the_record_is_found_from_the_run_folder_and_from_its_hugging_face_copy(tmp_path):
    run = make_run(tmp_path / "run")
    hf = run / "global_step_3" / "actor" / "huggingface"
    assert run_settings_for(run) == (RECORDED, run / RECORD)
    assert run_settings_for(hf) == (RECORDED, run / RECORD)
    assert run_settings_for(make_run(tmp_path / "old", record=None)) is None  # a run from before the record
    (run / RECORD).write_text("{not json")
    with pytest.raises(ValueError, match=f"run record {run / RECORD} .*: malformed JSON at line 1"):
        run_settings_for(hf)
    (run / RECORD).write_text(json.dumps({**RECORDED, "search_agent": {"top_kk": 2}}))
    with pytest.raises(ValueError, match=r"search_agent: unknown search_agent settings 'top_kk' \(did you mean"):
        run_settings_for(run)


def test_eval_takes_each_setting_from_its_flag_else_the_run_else_its_default(tmp_path):
    from research_plugin.evaluation.runner import EvalSettings, with_run

    run = make_run(tmp_path / "run")
    given = EvalSettings(data=["x.parquet"], model=str(run), retriever=None, out="o", top_k=3, response_length=100)
    got, said = with_run(given)
    assert (got.top_k, got.response_length) == (3, 100)  # flags win
    assert (got.max_searches, got.max_result_tokens, got.prompt_length) == (4, 192, 384)  # the run's
    assert (got.dialect, got.scheme, got.reward_options) == ("research", "research", {"format_penalty": 0.5})
    assert got.retriever == {"type": "bm25", "corpus": "/data/corpus.jsonl"}
    assert "from the command line: top_k=3, response_length=100" in said
    assert f"from the run ({run / RECORD}): dialect=research" in said and "max_result_tokens=192" in said

    plain = EvalSettings(data=["x.parquet"], model=str(make_run(tmp_path / "m", None)), retriever=None, out="o")
    got, said = with_run(plain)
    assert (got.top_k, got.max_result_tokens, got.response_length, got.retriever) == (5, 512, 8192, "two_hop")
    assert "defaults (no run record): dialect=research" in said and "from the run" not in said
    endpoint = EvalSettings(data=["x.parquet"], model="http://127.0.0.1:1/v1", retriever="two_hop", out="o")
    assert with_run(endpoint)[0].top_k == 5  # an endpoint has no run folder


def test_eval_rolls_out_with_the_runs_reward_options():
    from research_plugin.demo.assets import demo_model
    from research_plugin.evaluation.rollout import eval_config

    config = eval_config(
        Path(demo_model()), search_agent={"top_k": 2}, response_length=64, prompt_length=128, temperature=0.0,
        top_p=1.0, top_k=-1, scheme="r1_stage2", reward_options={"format_penalty": 0.5},
    )  # fmt: skip
    assert dict(config.reward.custom_reward_function.reward_kwargs) == {"scheme": "r1_stage2", "format_penalty": 0.5}
    assert config.search_agent.top_k == 2


def test_demo_takes_the_runs_settings_and_the_question_sets_retriever(tmp_path):
    from research_plugin.evaluation.demo import demo_settings

    run = make_run(tmp_path / "run")
    facts = {"dialect": "research", "top_k": 2, "max_searches": 4, "retriever": {"type": "bm25", "corpus": "w.jsonl"}}
    given = {"dialect": None, "scheme": None, "response_length": 128}
    values, agent, said = demo_settings(str(run), {"retriever": "two_hop"}, given)
    assert agent == {"dialect": "research", "top_k": 2, "max_searches": 4, "max_result_tokens": 192,
                     "search_timeout": 60.0, "prompt_format": "auto", "retriever": "two_hop"}  # fmt: skip
    assert values["response_length"] == 128 and values["reward_options"] == {"format_penalty": 0.5}
    assert "from the command line: response_length=128" in said and "from the run (" in said
    # no run: the question set's settings (the fact world's: the main job's recipe), else the agent loop's
    values, agent, said = demo_settings(None, facts, {"dialect": None, "scheme": None, "response_length": None})
    assert (agent["top_k"], agent["max_result_tokens"], values["response_length"]) == (2, 512, 256)
    assert agent["retriever"] == facts["retriever"] and "no run record" in said


def test_eval_of_the_main_jobs_folder_scores_as_its_last_validation(main_job_hf, tmp_path):
    """The summary's own ``research-plugin eval`` command on the run's validation questions: the run's search settings
    (2 passages of 192 tokens, not eval's 5 of 512), and the answer F1 the run's last validation logged."""
    from research_plugin.demo.assets import fact_world
    from research_plugin.dynamics.training_logs import validation_means

    run = main_job_hf["ckpt"]
    record = json.loads((run / RECORD).read_text())
    assert record["search_agent"]["top_k"] == 2 and record["search_agent"]["max_result_tokens"] == 192
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = validation_means(lines[-1]["data"])
    cmd = [sys.executable, "-m", "research_plugin.cli", "eval", "--model", str(run), "--data", *record["val_files"],
           "--retriever", fact_world("corpus"), "--out", str(tmp_path / "eval")]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"from the run ({run / RECORD}): dialect=research, scheme=research" in out.stdout
    assert "top_k=2, max_searches=4, max_result_tokens=192" in out.stdout
    got = json.loads((tmp_path / "eval" / "summary.json").read_text())["benchmarks"]["fact_world"]
    assert got["rows"] == 80
    assert abs(got["f1"] - last["f1"]) <= 0.05, (got["f1"], last)  # greedy both times: the same answers
    assert abs(got["reward"] - last["reward"]) <= 0.05, (got["reward"], last)
