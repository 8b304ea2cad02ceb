"""``research-plugin demo``: search-agent rollouts through verl's own AgentLoopWorker and reward loop on CPU.

Questions come from the bundled two-hop set, retrieval is in-process BM25 over the bundled corpus, the policy
is a local HF model (by default the bundled tiny Qwen2, format-warmed-up: it shows the plumbing, not skill).
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


def load_questions(n: int, path: Path | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (path or demo_questions_path()).open(encoding="utf-8") if line.strip()]
    return rows[:n]


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

    from ..verl.hf_generation import HFGenerationServer
    from ..verl.run_report import resolve_model_dir
    from .assets import demo_model

    model_dir = resolve_model_dir(model) if model else Path(demo_model())
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
