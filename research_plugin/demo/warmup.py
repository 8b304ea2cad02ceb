"""Warm-up: a supervised pass that teaches a tiny random policy the search dialect, to read its results, and a
habit of answering some questions from memory that RL has to unlearn.

A randomly initialised policy never writes a well-formed answer, so every reward is 0, every GRPO advantage is 0
and RL has nothing to learn from. The papers start from pretrained models that already follow the format and can
copy a fact out of a passage, but search too little; the tiny CPU policy gets that starting point here, on practice
facts (:class:`~research_plugin.demo.fact_world.PracticeWorld`: fresh invented names every example, none of the
bundled world's). First every example searches: think, search the question, read the two passages the search
returns, answer with the object of the matching one in ``\\boxed{}``; every example pairs names anew, so answers
cannot be memorised, only copied. Over the last ``mix_steps`` most examples answer at once "from memory" instead,
with a name that is wrong, mostly for questions other than "Who founded X?" (:func:`search_propensity`). The loss
covers the policy's own text only (result blocks are masked, as in RL). The system prompt comes in gradually (short
sequences train faster; the last steps see the prompts RL uses).

The result searches about a quarter of the fact world's held-out questions greedily and copies the answer for most
of those: RL has to teach it to search the rest. It is built once and shipped (:mod:`.policy`: ~20 min on 2 cores).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from ..core.dialects import Dialect, format_passages, get_dialect, result_block
from ..core.prompts import chat_messages
from ..retrieval.base import Passage
from .fact_world import Fact, PracticeWorld
from .tiny_model import build_tiny_model

HIDDEN, LAYERS = 128, 2
"""The policy's size: 0.6M parameters."""


def passages(facts: list[Fact]) -> list[Passage]:
    """The facts as the retriever returns them from the world's corpus (title: the subject)."""
    return [Passage(f"practice-{i}", f.subject, f.sentence) for i, f in enumerate(facts)]


def scripted_response(question: str, answer: str, dialect: Dialect, results: str | None) -> list[tuple[str, bool]]:
    """``(text, trained)`` segments of a one-search trajectory, ``results`` being the search's result block, or
    (``results=None``) of a direct answer from memory."""
    d = dialect
    final = f"\\boxed{{{answer}}}" if d.boxed else answer
    answer_segment = (f"{d.answer_open} The final answer is {final} {d.answer_close}", True)
    if results is None:
        return [(f"{d.think_open} I remember this one. {d.think_close}", True), answer_segment]
    return [
        (f"{d.think_open} Let me search for it. {d.think_close}", True),
        (f"{d.query_open} {question} {d.query_close}", True),
        (results, False),
        answer_segment,
    ]


SEARCH_SHARE = 0.35
"""Share of the practice examples that search once the mix begins (see :func:`warm_up`): questions of every kind,
so queries of every kind stay equally common; the others are answered at once "from memory" with an invented name,
which is wrong (names are paired anew every example, as the bundled world's are unknown to the policy)."""
GUESSED = {"founder": 0.04, "birthplace": 0.32, "capital": 0.32, "river": 0.32}
"""The kinds of question answered from memory, by weight: rarely "Who founded X?"."""


def search_propensity(search_share: float = SEARCH_SHARE) -> dict[str, float]:
    """P(search | kind of question) that the mix teaches: greedy, the warmed-up policy searches "Who founded X?"
    (0.77) and guesses the other kinds (0.30); sampled, it searches every kind some of the time, so RL can find
    that searching pays."""
    each = search_share / len(GUESSED)
    return {r: round(each / (each + (1 - search_share) * w), 4) for r, w in GUESSED.items()}


def practice_texts(
    world: PracticeWorld, dialect: Dialect, system_prompt: bool, search_share: float = SEARCH_SHARE
) -> tuple[list[dict], list[tuple[str, bool]]]:
    """The chat messages and the ``(text, trained)`` response segments of one practice trajectory: a search and the
    answer copied from its result (a share ``search_share``), or a guess from memory."""
    if world.rng.random() < search_share:
        fact, hits = world.example()
        block, answer = result_block(format_passages(passages(hits)), dialect), fact.object
    else:
        fact = world.fact(world.rng.choices(list(GUESSED), weights=list(GUESSED.values()))[0])
        block, answer = None, world.guess(fact)
    messages = chat_messages(fact.question, dialect)
    if not system_prompt:
        messages = messages[1:]
    return messages, scripted_response(fact.question, answer, dialect, block)


def practice_example(
    tokenizer, world: PracticeWorld, dialect: Dialect, system_prompt: bool, search_share: float = SEARCH_SHARE
) -> tuple[list, list]:
    """Token ids and labels (-100 where not trained) of one practice trajectory (:func:`practice_texts`)."""
    messages, segments = practice_texts(world, dialect, system_prompt, search_share)
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    labels = [-100] * len(ids)
    for piece_text, trained in segments:
        piece = tokenizer.encode(piece_text, add_special_tokens=False)
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    ids.append(tokenizer.eos_token_id)
    labels.append(tokenizer.eos_token_id)
    return ids, labels


def learning_rate(step: int, steps: int, warmup: int = 100, decay: int = 600) -> float:
    """Multiplier of the peak learning rate: linear warm-up, flat, then linear decay to 10% over the last ``decay``
    steps (the final branch probabilities settle instead of following the last batches)."""
    return min(1.0, (step + 1) / warmup, 0.1 + 0.9 * max(0.0, (steps - step) / decay))


WARMUP_STEPS = 3600


def warm_up(
    model,
    tokenizer,
    *,
    dialect: str = "research",
    steps: int = WARMUP_STEPS,
    prompt_steps: int = 400,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    search_share: float = SEARCH_SHARE,
    mix_steps: int = 1200,
    progress=None,
) -> dict:
    """Train ``model`` (in place) on practice trajectories; ``progress(step, loss)`` is called every 10 steps.
    Returns the mean loss of the last 100 steps."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    world = PracticeWorld(seed + 1)
    d = get_dialect(dialect)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(s, steps))
    model.train()
    losses = []
    for step in range(steps):
        # share of examples with the system prompt: none for the first steps (short sequences train faster),
        # then rising to all over the last `prompt_steps`
        share = max(0.0, 1.0 - (steps - step) / prompt_steps)
        # every example searches until the last `mix_steps` (reading is the hard part), then some answer from memory
        searching = search_share if steps - step <= mix_steps else 1.0
        batch = [practice_example(tokenizer, world, d, rng.random() < share, searching) for _ in range(batch_size)]
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
        losses.append(loss.item())
        if progress is not None and (step % 10 == 9 or step == steps - 1):
            progress(step + 1, sum(losses[-10:]) / len(losses[-10:]))
    model.eval()
    return {"final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4)}


def warmed_up_policy(workdir: str | os.PathLike, *, seed: int = 0, steps: int = WARMUP_STEPS, progress=None):
    """The tiny model (:data:`HIDDEN`, :data:`LAYERS`; initialised with ``seed``) built in ``workdir`` and warmed up:
    ``(model, tokenizer, stats)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = build_tiny_model(Path(workdir) / "init", hidden_size=HIDDEN, num_layers=LAYERS, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return model, tokenizer, warm_up(model, tokenizer, steps=steps, seed=seed, progress=progress)
