"""Warm-up: a supervised pass that teaches a tiny random policy the search dialect and to read its results.

A randomly initialised policy never writes a well-formed answer, so every reward is 0, every GRPO advantage is 0
and RL has nothing to learn from. The papers start from pretrained models that already follow the format and can
copy a fact out of a passage; the tiny CPU policy gets that starting point here, on practice facts
(:class:`~research_plugin.demo.fact_world.PracticeWorld`: fresh invented names every example, none of the bundled
world's): think, search the question, read the two passages the search returns, answer with the object of the
matching one in ``\\boxed{}``. Every example pairs names anew, so answers cannot be memorised, only copied; the loss
covers the policy's own text only (result blocks are masked, as in RL). The system prompt comes in gradually
(short sequences train faster; the last steps see the prompts RL uses). After 2,400 steps (~13 minutes on two
cores, once: the result is cached) the policy copies the right answer for some of the held-out questions: the rest
is left for RL.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from ..core.dialects import Dialect, format_passages, get_dialect, result_block
from ..core.prompts import chat_messages
from ..retrieval.base import Passage
from .fact_world import Fact, PracticeWorld


def passages(facts: list[Fact]) -> list[Passage]:
    """The facts as the retriever returns them from the world's corpus (title: the subject)."""
    return [Passage(f"practice-{i}", f.subject, f.sentence) for i, f in enumerate(facts)]


def scripted_response(question: str, answer: str, dialect: Dialect, results: str) -> list[tuple[str, bool]]:
    """``(text, trained)`` segments of a one-search trajectory; ``results`` is the search's result block."""
    d = dialect
    final = f"\\boxed{{{answer}}}" if d.boxed else answer
    return [
        (f"{d.think_open} Let me search for it. {d.think_close}", True),
        (f"{d.query_open} {question} {d.query_close}", True),
        (results, False),
        (f"{d.answer_open} The final answer is {final} {d.answer_close}", True),
    ]


def practice_example(tokenizer, world: PracticeWorld, dialect: Dialect, system_prompt: bool) -> tuple[list, list]:
    """Token ids and labels (-100 where not trained) of one practice trajectory."""
    fact, hits = world.example()
    messages = chat_messages(fact.question, dialect)
    if not system_prompt:
        messages = messages[1:]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    labels = [-100] * len(ids)
    block = result_block(format_passages(passages(hits)), dialect)
    for piece_text, trained in scripted_response(fact.question, fact.object, dialect, block):
        piece = tokenizer.encode(piece_text, add_special_tokens=False)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return ids, labels


def warm_up(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dialect: str = "research",
    steps: int = 2400,
    prompt_steps: int = 400,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> Path:
    """Train the model in ``model_dir`` on practice trajectories; write it (atomically) to ``out_dir``."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    rng = random.Random(seed)
    world = PracticeWorld(seed + 1)
    d = get_dialect(dialect)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100))
    model.train()
    bar = tqdm(range(steps), desc="warm-up on practice facts", unit="step")
    for step in bar:
        # share of examples with the system prompt: none for the first steps (short sequences train faster),
        # then rising to all over the last `prompt_steps`
        share = max(0.0, 1.0 - (steps - step) / prompt_steps)
        batch = [practice_example(tokenizer, world, d, rng.random() < share) for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return out
