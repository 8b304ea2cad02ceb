"""Search-agent rollouts of evaluation rows through verl's own ``AgentLoopWorker`` and ``RewardLoopWorker``,
in-process: the loop training runs, with validation sampling (greedy unless asked otherwise). Each row is its own
call, at most ``concurrency`` at a time, so finished rows are handed back as they finish."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..verl.local_rollout import batch_of, masked_spans, response, roll_out, trainer_config
from .data import EvalRow


@dataclass(frozen=True)
class Trajectory:
    """One finished rollout, decoded."""

    response: str
    """The whole response with its result blocks, decoded as verl's reward manager decodes it."""
    retrieved: list[str]
    """The lines of text the loop inserted (masked tokens): passages and notices."""
    dialect: str
    reward: float
    """The training reward of the configured scheme, from verl's reward loop."""
    num_searches: int
    num_failed_searches: int
    num_invalid_queries: int
    retrieved_tokens: int
    response_tokens: int
    generated_tokens: int
    """Response tokens the policy wrote itself (``response_mask`` 1)."""
    ended_by_eos: bool
    """The policy ended the trajectory (EOS), not the response budget or the server's context."""


def eval_config(
    model_dir: Path,
    *,
    search_agent: dict[str, Any],
    response_length: int,
    prompt_length: int,
    temperature: float,
    top_p: float,
    top_k: int,
    scheme: str,
    reward_options: dict[str, Any] | None = None,
):
    """verl's trainer config for evaluation rollouts: validation sampling params, no log-probs, our loop settings,
    the reward function's ``scheme`` and other keyword arguments (``reward_options``)."""
    return trainer_config(
        model_dir,
        response_length=response_length,
        scheme=scheme,
        reward_options=reward_options,
        search_agent=search_agent,
        overrides=[
            f"actor_rollout_ref.rollout.prompt_length={prompt_length}",
            "actor_rollout_ref.rollout.calculate_log_probs=False",
            f"actor_rollout_ref.rollout.val_kwargs.temperature={temperature}",
            f"actor_rollout_ref.rollout.val_kwargs.top_p={top_p}",
            f"actor_rollout_ref.rollout.val_kwargs.top_k={top_k}",
        ],
    )


def _batch(row: EvalRow):
    """A one-row verl validation batch."""
    item = {"raw_prompt": row.prompt, "data_source": row.data_source, "ground_truth": row.golds}
    return batch_of([{**item, "extra_info": row.extra_info}], validate=True)


def _trajectory(out, tokenizer) -> Trajectory:
    ids, mask = response(out, 0)
    spans = [tokenizer.decode(run, skip_special_tokens=True) for masked, run in masked_spans(ids, mask) if masked]
    nt = out.non_tensor_batch
    return Trajectory(
        response=tokenizer.decode(ids, skip_special_tokens=True),
        retrieved=[line.strip() for span in spans for line in span.splitlines() if line.strip()],
        dialect=str(nt["dialect"][0]),
        reward=float(nt["score"][0]),
        num_searches=int(nt["num_searches"][0]),
        num_failed_searches=int(nt["num_failed_searches"][0]),
        num_invalid_queries=int(nt["num_invalid_queries"][0]),
        retrieved_tokens=int(nt["retrieved_tokens"][0]),
        response_tokens=len(ids),
        generated_tokens=int(sum(mask)),
        ended_by_eos=bool(nt["ended_by_eos"][0]),
    )


Done = Callable[[EvalRow, Trajectory | None, str | None], None]
"""Called once per row with its trajectory, or with None and the error that stopped the row."""


def run_rollouts(config, server: Any, rows: list[EvalRow], *, concurrency: int, on_done: Done) -> None:
    """Roll out every row (at most ``concurrency`` at once); a row that raises is reported, the others go on."""
    from .policy import close_policy

    def done(i: int, out: Any, error: str | None, tokenizer: Any) -> None:
        traj = None
        if out is not None:
            try:
                traj = _trajectory(out, tokenizer)
            except Exception as e:  # recorded for this row; the run goes on
                error = f"{type(e).__name__}: {e}"[:500]
        on_done(rows[i], traj, error)

    roll_out(config, server, [_batch(r) for r in rows], concurrency=concurrency, on_done=done,
             close=lambda: close_policy(server))  # fmt: skip
