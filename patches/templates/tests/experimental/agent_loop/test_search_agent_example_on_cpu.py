"""examples/search_agent: every config composes with verl's ppo_trainer and passes its validation; the
preprocessing script turns FlashRAG jsonl into rows the loop and the reward understand."""

import json
import re
import runpy
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from verl.experimental.agent_loop.search_agent_loop import SearchAgentConfig
from verl.utils.reward_score.search_agent.rewards import SCHEMES

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "search_agent"
CONFIGS = sorted(p.stem for p in (EXAMPLE / "config").glob("*.yaml"))


def compose(name: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(EXAMPLE / "config"), version_base=None):
        return hydra_compose(config_name=name)


def test_the_example_is_there():
    assert "search_agent_quickstart" in CONFIGS and len(CONFIGS) > 1
    assert (EXAMPLE / "data" / "two_hop_corpus.jsonl").is_file()


@pytest.mark.parametrize("name", CONFIGS)
def test_config_composes_and_passes_verl_validation(name, monkeypatch):
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.utils.config import validate_config

    text = (EXAMPLE / "config" / f"{name}.yaml").read_text()
    for env in re.findall(r"\$\{oc\.env:(\w+)", text):
        monkeypatch.setenv(env, "/ckpt")
    config = compose(name)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))

    get_trainer_cls(config.trainer.v1.trainer_mode)  # a trainer verl has
    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == "search_agent"
    agent = SearchAgentConfig.merged(config.search_agent)  # known settings, a valid dialect
    reward = config.reward.custom_reward_function
    assert SCHEMES[reward.reward_kwargs.scheme].dialect == agent.dialect
    score = get_custom_reward_fn(config)(data_source="x", solution_str="no answer", ground_truth=["a"], extra_info={})
    assert set(score) >= {"score", "f1", "em", "format"}
    sized = re.search(r"Sized for (\d+) x", text)
    assert sized and int(sized.group(1)) == config.trainer.n_gpus_per_node * config.trainer.nnodes


@pytest.mark.parametrize("template", ["instruct", "base"])
def test_preprocessing_writes_rows_for_the_loop(template, tmp_path, monkeypatch, capsys):
    source = tmp_path / "questions.jsonl"
    lines = (EXAMPLE / "data" / "two_hop_questions.jsonl").read_text().splitlines()[:5]
    source.write_text("\n".join([*lines, '{"question": "no answer"}', "[1, 2]"]) + "\n")
    out = tmp_path / "rows.parquet"
    argv = ["preprocess_flashrag.py", "--input", str(source), "--out", str(out), "--template", template]
    monkeypatch.setattr(sys, "argv", [*argv, "--dialect", "search_r1", "--scheme", "search_r1_em"])
    runpy.run_path(str(EXAMPLE / "preprocess_flashrag.py"), run_name="__main__")

    assert "wrote 5 rows" in capsys.readouterr().out
    rows = pq.read_table(out).to_pylist()
    first = json.loads(lines[0])
    assert rows[0]["reward_model"]["ground_truth"] == first["golden_answers"]
    assert rows[0]["agent_name"] == "search_agent" and rows[0]["extra_info"]["template"] == template
    roles = [m["role"] for m in rows[0]["prompt"]]
    assert roles == (["system", "user"] if template == "instruct" else ["user"])
    assert "<information>" in rows[0]["prompt"][0]["content"] and first["question"] in rows[0]["prompt"][-1]["content"]
