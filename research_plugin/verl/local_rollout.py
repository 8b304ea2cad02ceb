"""verl's own ``AgentLoopWorker`` and ``RewardLoopWorker`` run in-process, without Ray: the search agent loop of
training, driven by any object with verl's LLM-server ``generate`` (the ``hf`` generation server, an endpoint
client). ``research-plugin demo`` and ``research-plugin eval`` roll out through it; the tests use it to drive the
loop with scripted servers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from ..core.prompts import chat_messages


class LocalActor:
    """verl awaits ``handle.method.remote(...)`` on its reward workers; call the worker in-process instead."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        return type("RemoteMethod", (), {"remote": staticmethod(getattr(self._obj, name))})


def compose_verl_config(overrides=()):
    """verl's own ``ppo_trainer`` config with command-line style overrides, composed by Hydra as ``main_ppo`` does."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def trainer_config(model_dir: Path, *, response_length: int, scheme: str = "research", overrides=()):
    """The trainer config for search-agent rollouts: verl's defaults, our agent loop's reward and settings."""
    return compose_verl_config(
        [
            f"actor_rollout_ref.model.path={model_dir}",
            "actor_rollout_ref.rollout.name=vllm",  # a required name; the HF server below does the work
            "actor_rollout_ref.rollout.prompt_length=1024",
            f"actor_rollout_ref.rollout.response_length={response_length}",
            "actor_rollout_ref.rollout.calculate_log_probs=True",
            "reward.custom_reward_function.path=pkg://research_plugin",
            "reward.custom_reward_function.name=compute_score",
            f"+reward.custom_reward_function.reward_kwargs.scheme={scheme}",
            *overrides,
        ]
    )


def make_batch(rows: list[dict], dialect: str):
    import torch
    from verl.protocol import DataProto

    def objects(xs):
        arr = np.empty(len(xs), dtype=object)
        arr[:] = xs
        return arr

    return DataProto.from_dict(
        tensors={"index": torch.arange(len(rows))},
        non_tensors={
            "raw_prompt": objects([chat_messages(r["question"], dialect) for r in rows]),
            "agent_name": objects(["search_agent"] * len(rows)),
            "data_source": objects(["demo"] * len(rows)),
            "reward_model": objects([{"style": "rule", "ground_truth": r["golden_answers"]} for r in rows]),
            "extra_info": objects([{"index": i, "dialect": dialect, "id": r.get("id", i)} for i, r in enumerate(rows)]),
        },
    )


def run_agent_loop(config, server, batch):
    """One rollout batch through verl's AgentLoopWorker, rewards from verl's RewardLoopWorker, in-process."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.reward_loop import RewardLoopWorker

    async def go():  # verl objects capture the running event loop: build them inside it
        reward = LocalActor(RewardLoopWorker(config))
        worker = AgentLoopWorker(config, server, reward_loop_worker_handles=[reward])
        return await worker.generate_sequences(batch)

    return asyncio.run(go())
