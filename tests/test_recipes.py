"""Every ``recipes/*.yaml`` composes with verl 0.9.1's own Hydra config and passes verl's validation.

Composition goes through Hydra's compose API over the recipes folder, which is what ``python -m
verl.trainer.main_ppo --config-path $(research-plugin recipes dir) --config-name NAME`` does (one test runs that very
command). Validation is the call ``main_ppo.main`` makes before it starts Ray; it reads the GPU counts from the
config (``trainer.n_gpus_per_node``, ``trainer.nnodes``) and never looks for devices, so no override is needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from research_plugin.core.rewards import SCHEMES
from research_plugin.core.search_step import SearchAgentConfig
from research_plugin.prepare import Source, prepare
from research_plugin.recipes import recipes_dir

from .recipe_config import compose_recipe as compose

RECIPES_DIR = recipes_dir()
RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
FIXTURE = Path(__file__).parent / "fixtures" / "prepare" / "popqa_test.jsonl"


def validate(config) -> None:
    """What ``verl.trainer.main_ppo.main`` does before starting Ray."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))


def template_of(config) -> str:
    """The prompt template a recipe's rows must have: raw prompt format means base-model rows."""
    return "base" if config.search_agent.get("prompt_format") == "raw" else "instruct"


def test_the_paper_recipes_are_there():
    assert {
        "research_qwen2.5_7b_instruct",
        "research_qwen2.5_7b_base",
        "research_qwen2.5_32b_instruct",
        "research_qwen2.5_32b_base",
        "r1_searcher_stage1",
        "r1_searcher_stage2",
        "search_r1_like",
    } <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_composes_and_passes_verl_validation(name):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = compose(name)
    validate(config)

    assert config.actor_rollout_ref.rollout.agent.default_agent_loop == "search_agent"
    agent = SearchAgentConfig.merged(config.search_agent)  # known settings, valid dialect
    assert agent.retriever, "the recipe must name its retriever"

    reward = config.reward.custom_reward_function
    assert (reward.path, reward.name) == ("pkg://research_plugin", "compute_score")
    scheme = reward.reward_kwargs.scheme
    assert SCHEMES[scheme].dialect == agent.dialect
    score = get_custom_reward_fn(config)(  # loaded the way verl's reward loop loads it
        data_source="x", solution_str="no answer here", ground_truth=["Lune"], extra_info={}
    )
    assert set(score) >= {"score", "f1", "format"}

    if config.trainer.device == "cuda":
        assert config.actor_rollout_ref.rollout.name == "vllm"
        header = RECIPES_DIR.joinpath(f"{name}.yaml").read_text().split("\nhydra:")[0]
        sized = re.search(r"Sized for (\d+) x .*GPUs", header)
        assert sized, "a GPU recipe says in a comment how many GPUs it was sized for"
        assert int(sized.group(1)) == config.trainer.n_gpus_per_node * config.trainer.nnodes


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("name", RECIPES)
def test_paths_from_the_command_line(name, tmp_path, tiny_model_dir, tokenizer):
    """Data, model, checkpoint and retriever paths overridden as on the launcher's command line; the train set
    then loads through verl's own ``create_rl_dataset``, as the trainer does."""
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.config import omega_conf_to_dataclass

    base = compose(name)
    dialect, template = base.search_agent.dialect, template_of(base)
    train, val = tmp_path / "train.parquet", tmp_path / "val.parquet"
    opts = dict(dialect=dialect, template=template, scheme=base.reward.custom_reward_function.reward_kwargs.scheme)
    prepare([Source("popqa", FIXTURE)], train, **opts)
    prepare([Source("popqa", FIXTURE)], val, split="test", **opts)

    config = compose(
        name,
        [
            f"data.train_files={train}",
            f"data.val_files=[{val},{val}]",
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"trainer.default_local_dir={tmp_path / 'ckpt'}",
            "search_agent.retriever=two_hop",
        ],
    )
    validate(config)
    assert config.data.train_files == str(train) and list(config.data.val_files) == [str(val)] * 2
    assert config.search_agent.retriever == "two_hop"
    resolved = OmegaConf.to_container(config, resolve=True)  # what the trainer's TaskRunner resolves first
    assert resolved["actor_rollout_ref"]["model"]["path"] == str(tiny_model_dir)
    omega_conf_to_dataclass(config.algorithm)  # verl's own dataclasses check the values too
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout)

    dataset = create_rl_dataset(config.data.train_files, config.data, tokenizer, None, is_train=True)
    assert len(dataset) == len(pd.read_parquet(train))
    row = dataset[0]
    assert row["agent_name"] == "search_agent"
    assert row["extra_info"]["dialect"] == dialect and row["extra_info"]["template"] == template


def test_r1_searcher_stage2_starts_from_stage1s_checkpoint(monkeypatch):
    stage1, stage2 = compose("r1_searcher_stage1"), compose("r1_searcher_stage2")
    assert "hf_model" in stage1.actor_rollout_ref.actor.checkpoint.save_contents  # a plain HF copy to start from
    assert stage1.reward.custom_reward_function.reward_kwargs.scheme == "r1_stage1"
    assert stage2.reward.custom_reward_function.reward_kwargs.scheme == "r1_stage2"

    monkeypatch.delenv("R1_STAGE1_CHECKPOINT", raising=False)
    with pytest.raises(Exception, match="R1_STAGE1_CHECKPOINT"):  # no checkpoint named: it stops, saying why
        OmegaConf.to_container(stage2, resolve=True)
    ckpt = f"{stage1.trainer.default_local_dir}/global_step_40/actor/huggingface"
    monkeypatch.setenv("R1_STAGE1_CHECKPOINT", ckpt)
    assert compose("r1_searcher_stage2").actor_rollout_ref.model.path == ckpt


PAPER_VALUES = {
    # ReSearch: GRPO, lr 1e-6, batch 256, 5 samples, low-variance KL loss 0.001, 8192 response tokens, top-5, 2 epochs
    "research": dict(
        adv="grpo", lr=1e-6, batch=256, n=5, kl=0.001, response=8192, top_k=5, epochs=2, scheme="research"
    ),
    # R1-Searcher: REINFORCE++ with a baseline, lr 2e-6, 16 samples
    "r1_searcher": dict(adv="reinforce_plus_plus_baseline", lr=2e-6, n=16),
    # Search-R1-like: GRPO, EM reward, top-3, search_r1 dialect
    "search_r1": dict(adv="grpo", top_k=3, scheme="search_r1_em", dialect="search_r1"),
}


@pytest.mark.parametrize("name", [n for n in RECIPES if n.startswith(tuple(PAPER_VALUES))])
def test_paper_values(name):
    config = compose(name)
    want = next(v for k, v in PAPER_VALUES.items() if name.startswith(k))
    actor, rollout = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout
    got = dict(
        adv=config.algorithm.adv_estimator,
        lr=actor.optim.lr,
        batch=config.data.train_batch_size,
        n=rollout.n,
        kl=actor.kl_loss_coef if actor.use_kl_loss and actor.kl_loss_type == "low_var_kl" else None,
        response=config.data.max_response_length,
        top_k=config.search_agent.top_k,
        epochs=config.trainer.total_epochs,
        scheme=config.reward.custom_reward_function.reward_kwargs.scheme,
        dialect=config.search_agent.dialect,
    )
    assert {k: got[k] for k in want} == want
    if name.startswith("research"):
        assert "musique" in config.data.train_files and len(config.data.val_files) == 4
        size = re.search(r"qwen2\.5_(\d+b)_(base|instruct)", name).groups()
        assert config.actor_rollout_ref.model.path.lower().startswith(f"qwen/qwen2.5-{size[0]}")
        assert ("instruct" in config.actor_rollout_ref.model.path.lower()) == (size[1] == "instruct")
        assert template_of(config) == size[1]


def test_the_launcher_command_line(tmp_path):
    """``python -m verl.trainer.main_ppo --config-path ... --config-name ...`` itself, printing the job config."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "verl.trainer.main_ppo",
            "--config-path",
            str(RECIPES_DIR),
            "--config-name",
            "research_qwen2.5_7b_instruct",
            f"data.train_files={tmp_path / 'train.parquet'}",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    job = OmegaConf.create(out.stdout)  # --cfg job prints the composed config as YAML and exits
    assert job.data.train_files == str(tmp_path / "train.parquet")
    assert job.actor_rollout_ref.rollout.agent.default_agent_loop == "search_agent"
    assert job.search_agent.dialect == "research"


def test_the_vllm_cpu_rollout_engine_applies_to_the_cpu_recipe():
    """``+rollout_engine=vllm_cpu`` turns the CPU recipe's rollout into verl's vLLM server with the plugin's worker
    extension; everything else (trainer, agent loop, reward) stays the recipe's."""
    from research_plugin.verl.vllm_cpu import WORKER_EXTENSION

    base, config = compose("tiny_cpu_grpo"), compose("tiny_cpu_grpo", ["+rollout_engine=vllm_cpu"])
    validate(config)
    rollout = config.actor_rollout_ref.rollout
    assert (rollout.name, rollout.dtype, rollout.enable_sleep_mode) == ("vllm", "float32", False)
    assert rollout.engine_kwargs.vllm.worker_extension_cls == WORKER_EXTENSION
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VLLM_CPU_KVCACHE_SPACE == "1"
    assert config.ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM == "cpu"  # the recipe's platform stays
    assert config.trainer == base.trainer and config.search_agent == base.search_agent
    assert config.reward == base.reward and config.actor_rollout_ref.actor == base.actor_rollout_ref.actor


def test_the_cpu_recipe_runs_the_steps_asked_for():
    """``trainer.total_training_steps=100`` trains 100 steps: the epoch count does not stop the run at the end of
    the first pass over the training questions (40 steps), as ``total_epochs: 1`` did."""
    import pandas as pd

    from research_plugin.demo.assets import fact_world

    config = compose("tiny_cpu_grpo", ["trainer.total_training_steps=100"])
    rows = len(pd.read_parquet(fact_world("train")))
    steps_per_epoch = rows // config.data.train_batch_size
    assert steps_per_epoch < 100 <= config.trainer.total_epochs * steps_per_epoch
