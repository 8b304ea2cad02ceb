"""verl's own ``AgentLoopWorker`` and ``RewardLoopWorker`` run in-process, without Ray: the search agent loop of
training, driven by any object with verl's LLM-server ``generate`` (the ``hf`` generation server, an endpoint
client). ``research-plugin demo`` and ``research-plugin eval`` roll out through it; the tests use it to drive the
loop with scripted servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

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


def trainer_config(
    model_dir: Path,
    *,
    response_length: int,
    scheme: str = "research",
    reward_options: dict | None = None,
    search_agent: dict | None = None,
    overrides=(),
):
    """The trainer config for search-agent rollouts: verl's defaults, our reward function with ``scheme`` and its
    other keyword arguments (``reward_options``), the agent loop's ``search_agent`` settings, then ``overrides``."""
    from omegaconf import open_dict

    config = compose_verl_config(
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
    with open_dict(config):
        if search_agent is not None:
            config.search_agent = search_agent
        config.reward.custom_reward_function.reward_kwargs.update(reward_options or {})
    return config


def batch_of(items: list[dict], *, validate: bool = False):
    """A verl batch of search-agent rows as verl's RL dataset hands them to the agent loop: each item's
    ``raw_prompt``, ``ground_truth``, ``data_source`` and ``extra_info``; ``validate`` marks a validation batch
    (verl samples it with ``val_kwargs``)."""
    import torch
    from verl.protocol import DataProto

    def objects(xs):
        arr = np.empty(len(xs), dtype=object)
        arr[:] = xs
        return arr

    return DataProto.from_dict(
        tensors={"index": torch.arange(len(items))},
        non_tensors={
            "raw_prompt": objects([it["raw_prompt"] for it in items]),
            "agent_name": objects(["search_agent"] * len(items)),
            "data_source": objects([it["data_source"] for it in items]),
            "reward_model": objects([{"style": "rule", "ground_truth": it["ground_truth"]} for it in items]),
            "extra_info": objects([it["extra_info"] for it in items]),
        },
        meta_info={"validate": True} if validate else {},
    )


def make_batch(rows: list[dict], dialect: str):
    """A batch of FlashRAG-style question rows (``question``, ``golden_answers``, optional ``id``) asked in
    ``dialect``'s chat prompt."""
    return batch_of(
        [
            {
                "raw_prompt": chat_messages(r["question"], dialect),
                "data_source": "demo",
                "ground_truth": r["golden_answers"],
                "extra_info": {"index": i, "dialect": dialect, "id": r.get("id", i)},
            }
            for i, r in enumerate(rows)
        ]
    )


Done = Callable[[int, Any, "str | None", Any], None]
"""Called once per batch: its position, verl's output (or None) and the error that stopped it (or None), and the
worker's tokenizer (the one verl's reward decodes with)."""


def roll_out(config, server, batches: list, *, concurrency: int | None = None, on_done: Done | None = None,
             close: Callable[[], Awaitable] | None = None) -> list:  # fmt: skip
    """Roll out ``batches`` through verl's ``AgentLoopWorker`` with rewards from its ``RewardLoopWorker``,
    in-process, at most ``concurrency`` at once (default: all); their outputs in order. With ``on_done``, each batch
    is reported as it finishes and one that raises is reported with its error (None in the list) while the others
    go on; without it the first error is raised. ``close`` is awaited at the end, in the same event loop."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.reward_loop import RewardLoopWorker

    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")

    async def go() -> list:  # verl objects capture the running event loop: build them inside it
        reward = LocalActor(RewardLoopWorker(config))
        worker = AgentLoopWorker(config, server, reward_loop_worker_handles=[reward])
        limit = asyncio.Semaphore(concurrency or max(1, len(batches)))

        async def one(i: int, batch):
            async with limit:
                if on_done is None:
                    return await worker.generate_sequences(batch)
                try:
                    out = await worker.generate_sequences(batch)
                except Exception as e:  # recorded for this batch; the others go on
                    on_done(i, None, f"{type(e).__name__}: {e}"[:500], worker.tokenizer)
                    return None
                on_done(i, out, None, worker.tokenizer)
                return out

        try:
            return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(batches))))
        finally:
            if close is not None:
                await close()

    return asyncio.run(go())


def run_agent_loop(config, server, batch):
    """One rollout batch through verl's AgentLoopWorker, rewards from verl's RewardLoopWorker, in-process."""
    return roll_out(config, server, [batch])[0]


def response(out, i: int) -> tuple[list[int], list[int]]:
    """Row ``i`` of a rollout's output: its response ids and their ``response_mask``, without the padding."""
    responses = out.batch["responses"]
    valid = out.batch["attention_mask"][i, -responses.shape[1] :].bool()
    return responses[i][valid].tolist(), out.batch["response_mask"][i][valid].tolist()


def masked_spans(ids: list[int], mask: list[int]) -> list[tuple[bool, list[int]]]:
    """A response's runs of tokens with the same ``response_mask``: (masked, ids), in order; masked runs are what
    the loop inserted (result blocks)."""
    spans, start = [], 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or mask[j] != mask[start]:
            spans.append((mask[start] == 0, ids[start:j]))
            start = j
    return spans
