"""``research-plugin demo``: search-agent rollouts through verl's own AgentLoopWorker and reward loop on CPU.

Questions are the fact world's held-out ones with BM25 over its corpus (the main job's task), or the bundled
two-hop set over the bundled corpus (``questions="two_hop"``: beyond the tiny policy, it shows the plumbing); the
policy is a local HF model, by default the embedded default's warmed-up tiny Qwen2.
Every trajectory is printed with its retrieved blocks marked as masked, followed by the reward parts.
The training job is ``research_plugin/recipes/tiny_cpu_grpo.yaml`` under verl's launcher.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..data import demo_questions_path
from ..verl.local_rollout import make_batch, run_agent_loop, trainer_config

QUESTIONS = ("facts", "two_hop")


def load_questions(n: int, path: Path | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (path or demo_questions_path()).open(encoding="utf-8") if line.strip()]
    return rows[:n]


def _questions(which: str, n: int) -> tuple[list[dict], list[str]]:
    """The first ``n`` questions of a set, and the overrides that point the agent loop at their corpus (for the fact
    world: the main job's search settings, from its recipe)."""
    if which == "two_hop":
        return load_questions(n), ["+search_agent.retriever=demo"]
    if which != "facts":
        raise ValueError(f"questions must be one of {', '.join(QUESTIONS)}, not {which!r}")
    from omegaconf import OmegaConf

    from ..recipes import recipes_dir
    from .assets import register_resolvers, split_rows
    from .fact_world import bundled_world, question_rows

    register_resolvers()
    settings = OmegaConf.to_container(OmegaConf.load(recipes_dir() / "tiny_cpu_grpo.yaml").search_agent, resolve=True)
    retriever = settings.pop("retriever")
    overrides = [f"+search_agent.{k}={v}" for k, v in settings.items()]
    overrides += [f"+search_agent.retriever.{k}={v}" for k, v in retriever.items()]
    return split_rows(question_rows(bundled_world()), "val")[:n], overrides


def run_demo(
    n: int = 4,
    model: str | None = None,
    dialect: str = "research",
    scheme: str = "research",
    response_length: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    questions: str = "facts",
) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..verl.hf_generation import HFGenerationServer
    from ..verl.run_report import resolve_model_dir
    from .assets import demo_model

    model_dir = resolve_model_dir(model) if model else Path(demo_model())
    rows, retriever = _questions(questions, n)
    config = trainer_config(
        model_dir,
        response_length=response_length,
        scheme=scheme,
        overrides=[*retriever, f"actor_rollout_ref.rollout.temperature={temperature}"],
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
