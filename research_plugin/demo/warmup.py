"""Format warm-up: a short supervised pass that teaches a tiny random policy the search dialect.

A randomly initialised policy never writes a well-formed answer, so every reward is 0, every GRPO advantage is
0 and RL has nothing to learn from. The papers start from pretrained models that already follow the format;
for the CPU demo the tiny policy gets the same starting point from scripted trajectories over the bundled
questions: think, search the first sub-question, read the real BM25 results, search the second, answer in
``\\boxed{}``. The loss covers the policy's own text only (result blocks are masked, as in RL). A few epochs
give a policy that usually keeps the format and often misses the answer: the reward varies within a group.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from ..core.dialects import Dialect, get_dialect
from ..core.prompts import chat_messages
from ..data import demo_questions_path


def scripted_response(row: dict, dialect: Dialect, results: list[str]) -> list[tuple[str, bool]]:
    """``(text, trained)`` segments of a two-search trajectory; ``results[i]`` is the result block of search i."""
    d = dialect
    segments: list[tuple[str, bool]] = [(f"{d.think_open} Let me search step by step. {d.think_close}", True)]
    for i, step in enumerate(row["metadata"]["decomposition"]):
        query = step.split(" -> ")[0]
        segments += [(f"{d.query_open} {query} {d.query_close}", True), (results[i], False)]
    answer = row["golden_answers"][0]
    final = f"\\boxed{{{answer}}}" if d.boxed else answer
    segments.append((f"{d.answer_open} {final} {d.answer_close}", True))
    return segments


def training_rows() -> list[dict]:
    """The bundled two-hop questions the warm-up scripts: training ones only, never the held-out validation ones."""
    from .assets import is_validation

    lines = [line for line in demo_questions_path().open(encoding="utf-8") if line.strip()]
    rows = [json.loads(line) for i, line in enumerate(lines) if not is_validation(i)]
    return [r for r in rows if len(r["metadata"].get("decomposition", [])) == 2]


def _result_blocks(tokenizer, dialect: Dialect, queries: list[str], top_k: int, max_result_tokens: int) -> list[str]:
    """The result block the agent loop appends after each query: same retriever, passages, cut and wrapping."""
    from ..core.search_step import SearchAgentConfig, SearchStep

    cfg = SearchAgentConfig(dialect=dialect.name, retriever="demo", top_k=top_k, max_result_tokens=max_result_tokens)

    async def blocks() -> list[str]:
        segments = [f"{dialect.query_open} {q} {dialect.query_close}" for q in queries]
        return [await SearchStep(cfg, tokenizer).result_block(segment) for segment in segments]

    return asyncio.run(blocks())


def _examples(tokenizer, dialect: Dialect, top_k: int, max_result_tokens: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (-100 where not trained) of one scripted trajectory per :func:`training_rows` row."""
    rows = training_rows()
    queries = [step.split(" -> ")[0] for r in rows for step in r["metadata"]["decomposition"]]
    blocks = iter(_result_blocks(tokenizer, dialect, queries, top_k, max_result_tokens))
    examples = []
    for row in rows:
        text = tokenizer.apply_chat_template(
            chat_messages(row["question"], dialect), add_generation_prompt=True, tokenize=False
        )
        prompt = tokenizer.encode(text, add_special_tokens=False)
        ids, labels = list(prompt), [-100] * len(prompt)
        for text, trained in scripted_response(row, dialect, [next(blocks), next(blocks)]):
            piece = tokenizer.encode(text, add_special_tokens=False)
            ids += piece
            labels += piece if trained else [-100] * len(piece)
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
        examples.append((ids, labels))
    return examples


def warm_up(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dialect: str = "research",
    top_k: int = 2,
    max_result_tokens: int = 192,
    epochs: int = 20,
    lr: float = 1e-2,
    batch_size: int = 8,
    seed: int = 0,
) -> Path:
    """Fine-tune the model in ``model_dir`` on scripted trajectories; write it (atomically) to ``out_dir``."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    examples = _examples(tokenizer, get_dialect(dialect), top_k, max_result_tokens)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    order = list(range(len(examples)))
    model.train()
    steps = tqdm(total=epochs * -(-len(order) // batch_size), desc="format warm-up", unit="step")
    for _ in range(epochs):
        random.Random(seed + _).shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start : start + batch_size]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in batch])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps.update()
            steps.set_postfix(loss=f"{loss.item():.3f}")
    steps.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return out
