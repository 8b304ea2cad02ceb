"""``research-plugin demo``: search-agent rollouts through verl's own AgentLoopWorker and reward loop on CPU.

Questions come from the bundled two-hop set, retrieval is in-process BM25 over the bundled corpus, the policy
is a local HF model (by default the bundled tiny Qwen2, format-warmed-up: it shows the plumbing, not skill).
Every trajectory is printed with its retrieved blocks marked as masked, followed by the reward parts.
The training job is ``recipes/tiny_cpu_grpo.yaml`` under verl's launcher.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np

from .data import demo_questions_path
from .prompts import chat_messages


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


def load_questions(n: int, path: Path | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (path or demo_questions_path()).open(encoding="utf-8") if line.strip()]
    return rows[:n]


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


def run_demo(
    n: int = 4,
    model: str | None = None,
    dialect: str = "research",
    scheme: str = "research",
    response_length: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .assets import demo_model
    from .hf_generation import HFGenerationServer

    model_dir = Path(model or demo_model())
    rows = load_questions(n)
    config = trainer_config(
        model_dir,
        response_length=response_length,
        scheme=scheme,
        overrides=["+search_agent.retriever=demo", f"actor_rollout_ref.rollout.temperature={temperature}"],
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    server = HFGenerationServer(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, seed=seed)

    start = time.perf_counter()
    out = run_agent_loop(config, server, make_batch(rows, dialect))
    elapsed = time.perf_counter() - start

    nt = out.non_tensor_batch
    attn = out.batch["attention_mask"][:, -response_length:].bool()
    for i, row in enumerate(rows):
        ids = out.batch["responses"][i][attn[i]].tolist()
        mask = out.batch["response_mask"][i][attn[i]].tolist()
        print(f"\n=== [{row['id']}] {row['question']}  (gold: {row['golden_answers'][0]})")
        print(render(tokenizer, ids, mask))
        print(
            f"--- score {nt['score'][i]:.3f}  f1 {nt['f1'][i]:.3f}  format {nt['format'][i]:.0f}  "
            f"searches {nt['num_searches'][i]}  retrieved tokens {nt['retrieved_tokens'][i]}  "
            f"response tokens {len(ids)}"
        )
    summary = {
        "questions": len(rows),
        "reward_mean": float(np.mean(nt["score"])),
        "f1_mean": float(np.mean(nt["f1"])),
        "format_rate": float(np.mean(nt["format"])),
        "searches_per_trajectory": float(np.mean(nt["num_searches"].astype(float))),
        "response_tokens_mean": float(attn.sum(1).float().mean()),
        "masked_share": float(1 - out.batch["response_mask"].sum() / attn.sum()),
        "seconds": round(elapsed, 2),
    }
    print("\n" + json.dumps(summary, indent=1))
    return summary


def render(tokenizer, ids: list[int], mask: list[int]) -> str:
    """Decode a response, showing masked (retrieved) spans between ⟦ ⟧."""
    parts, start = [], 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or mask[j] != mask[start]:
            text = tokenizer.decode(ids[start:j])
            parts.append(text if mask[start] else f"⟦{text}⟧")
            start = j
    return "".join(parts)
