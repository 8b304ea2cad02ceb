"""``research-plugin demo``: search-agent rollouts through verl's own AgentLoopWorker and reward loop on CPU (the
in-process driver of :mod:`..verl.local_rollout`, as ``eval``'s).

Questions are the fact world's held-out ones with BM25 over its corpus (the main job's task), or the bundled
two-hop set over the bundled corpus (``questions="two_hop"``: beyond the tiny policy, it shows the plumbing); the
policy is a local HF model, by default the embedded default's warmed-up tiny Qwen2.
Every trajectory is printed with its retrieved blocks marked as masked, followed by the reward parts.
The training job is ``research_plugin/recipes/tiny_cpu_grpo.yaml`` under verl's launcher.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..data import two_hop_questions_path
from ..verl.local_rollout import make_batch, masked_spans, response, run_agent_loop, trainer_config
from ..verl.run_settings import AGENT_SETTINGS

QUESTIONS = ("facts", "two_hop")


def load_questions(n: int, path: Path | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (path or two_hop_questions_path()).open(encoding="utf-8") if line.strip()]
    return rows[:n]


def _questions(which: str, n: int) -> tuple[list[dict], dict]:
    """The first ``n`` questions of a set, and the search settings for them: their corpus, and for the fact world the
    main job's other search settings, from its recipe."""
    if which == "two_hop":
        return load_questions(n), {"retriever": "two_hop"}
    if which != "facts":
        raise ValueError(f"questions must be one of {', '.join(QUESTIONS)}, not {which!r}")
    from omegaconf import OmegaConf

    from ..demo.assets import register_resolvers, split_rows
    from ..demo.fact_world import bundled_world, question_rows
    from ..recipes import recipes_dir

    register_resolvers()
    settings = OmegaConf.to_container(OmegaConf.load(recipes_dir() / "tiny_cpu_grpo.yaml").search_agent, resolve=True)
    return split_rows(question_rows(bundled_world()), "val")[:n], settings


RUN_SETTINGS = ("dialect", "scheme", "reward_options", *AGENT_SETTINGS, "response_length")
"""What a training run's folder given as ``--model`` supplies when the command line does not (the retriever is the
question set's)."""


def demo_settings(model: str | None, questions_search: dict, given: dict) -> tuple[dict, dict, str]:
    """The demo's settings: each of :data:`RUN_SETTINGS` from ``given`` (not None), else from the run ``model``
    comes from (:mod:`research_plugin.verl.run_settings`), else from the question set's search settings
    (``questions_search``) or the agent loop's defaults; the ``search_agent`` block they make (with the question
    set's retriever); lines saying which came from where."""
    from ..core.search_step import SearchAgentConfig
    from ..verl.run_settings import resolve

    defaults = {**asdict(SearchAgentConfig()), **questions_search, "scheme": "research", "reward_options": {}}
    values, sources = resolve(model, RUN_SETTINGS, given, {**defaults, "response_length": 256})
    agent = {k: values[k] for k in ("dialect", *AGENT_SETTINGS)}
    return values, {**agent, "retriever": questions_search["retriever"]}, sources


def run_demo(
    n: int = 4,
    model: str | None = None,
    dialect: str | None = None,
    scheme: str | None = None,
    response_length: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    questions: str = "facts",
) -> dict:
    """Roll out ``n`` questions; ``dialect``, ``scheme`` and ``response_length`` left None, and the search settings,
    are the training run's when ``model`` is a run's folder that recorded them (:func:`demo_settings`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..checkpoints import resolve_model_dir
    from ..demo.assets import demo_model
    from ..verl.hf_generation import HFGenerationServer

    model_dir = resolve_model_dir(model) if model else Path(demo_model())
    rows, questions_search = _questions(questions, n)
    given = {"dialect": dialect, "scheme": scheme, "response_length": response_length}
    values, search_agent, sources = demo_settings(model, questions_search, given)
    print(f"demo: search, reward and length settings\n{sources}")
    dialect, response_length = values["dialect"], values["response_length"]
    config = trainer_config(
        model_dir,
        response_length=response_length,
        scheme=values["scheme"],
        reward_options=values["reward_options"],
        search_agent=search_agent,
        overrides=[f"actor_rollout_ref.rollout.temperature={temperature}"],
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    server = HFGenerationServer(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, seed=seed)

    start = time.perf_counter()
    out = run_agent_loop(config, server, make_batch(rows, dialect))
    elapsed = time.perf_counter() - start

    nt = out.non_tensor_batch
    attn = out.batch["attention_mask"][:, -response_length:].bool()
    for i, row in enumerate(rows):
        ids, mask = response(out, i)
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
    parts = [(tokenizer.decode(run), masked) for masked, run in masked_spans(ids, mask)]
    return "".join(f"⟦{text}⟧" if masked else text for text, masked in parts)
