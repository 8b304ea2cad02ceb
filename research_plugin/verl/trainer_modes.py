"""Search metrics in verl's logs at every training step, not only at validation.

verl 0.9.1 logs a reward function's extra keys (F1, format, ...) only at validation, and nothing of what an agent
loop reports per trajectory. The trainer modes registered here (``search_sync``, ``search_colocate_async``,
``search_separate_async``: verl's ``sync``, ``colocate_async`` and ``separate_async`` trainers plus this) add, each
step, ``search/<key>/mean|min|max`` over the step's trajectories for:

- the reward parts of ``research_plugin.compute_score``: score, f1, em, cover_em, acc_r, subem, format, truncated;
- the agent loop's counters: num_searches, num_failed_searches, num_invalid_queries, retrieved_tokens, retrieval_s,
  and agent_cpu_s (the CPU seconds the agent loop's own code spent on the trajectory: parsing, searching,
  tokenising; not the waits for the engine and the retriever).

Also ``search/masked_tokens/sum`` (response tokens with ``response_mask`` 0, as the loss sees them) next to
``search/retrieved_tokens/sum`` (tokens the agent loop inserted from the retriever): equal when exactly the
retrieved tokens are masked.

Select one with ``trainer.v1.trainer_mode=search_sync`` (the recipes do). They also watch the run for collapse
(:mod:`.guard`: ``guard/*`` metrics; warn, stop or roll back) and end it with its metrics, plots and a summary
(:mod:`.run_report`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import transfer_queue as tq
from verl.trainer.ppo.v1 import register_trainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from ..core.rewards import METRICS
from ..core.search_step import SearchCounters
from .guard import GuardMixin
from .run_report import RunReportMixin

REWARD_KEYS = ("score", *METRICS, "format", "retrieval_hit", "truncated")
"""The reward parts of ``compute_score`` logged each step: the score, every answer metric, and its checks."""
LOOP_KEYS = (*(f.name for f in dataclasses.fields(SearchCounters)), "agent_cpu_s")
"""The agent loop's per-trajectory numbers: the search step's counters and the loop's own CPU."""


def search_metrics(extra_fields: Iterable[Mapping | None], prefix: str = "search") -> dict[str, float]:
    """``{prefix}/<key>/{mean,min,max}`` over trajectories; a key missing from every trajectory is left out."""
    values: dict[str, list[float]] = {k: [] for k in (*REWARD_KEYS, *LOOP_KEYS)}
    for fields in extra_fields:
        if not isinstance(fields, Mapping):
            continue
        reward = fields.get("reward_extra_info") or {}
        for key in values:
            value = reward.get(key, fields.get(key)) if key in REWARD_KEYS else fields.get(key)
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and np.isfinite(value):
                values[key].append(float(value))
    out = {}
    for key, xs in values.items():
        if xs:
            arr = np.asarray(xs)
            out.update(
                {f"{prefix}/{key}/mean": arr.mean(), f"{prefix}/{key}/min": arr.min(), f"{prefix}/{key}/max": arr.max()}
            )
    return out


class SearchMetricsMixin:
    """Adds :func:`search_metrics` of the step's non-padding trajectories to verl's per-step metrics."""

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        keys = [k for k, tag in zip(batch.keys, batch.tags) if not tag.get("is_padding", False)]
        if not keys:
            return
        data = tq.kv_batch_get(
            keys=keys, partition_id=batch.partition_id, select_fields=["extra_fields", "response_mask"]
        )
        extra_fields = data.pop("extra_fields").tolist()
        metrics.update(search_metrics(extra_fields))
        # what the loss will see: response tokens with mask 0, next to the tokens the agent loop retrieved
        masks = data.pop("response_mask")
        rows = masks.unbind() if getattr(masks, "is_nested", False) else list(masks)
        metrics["search/masked_tokens/sum"] = float(sum(int((row == 0).sum()) for row in rows))
        metrics["search/retrieved_tokens/sum"] = float(
            sum(f.get("retrieved_tokens", 0) for f in extra_fields if isinstance(f, Mapping))
        )


@register_trainer("search_sync")
class SearchPPOTrainerSync(RunReportMixin, GuardMixin, SearchMetricsMixin, PPOTrainerSync):
    pass


@register_trainer("search_colocate_async")
class SearchPPOTrainerColocateAsync(RunReportMixin, GuardMixin, SearchMetricsMixin, PPOTrainerColocateAsync):
    pass


@register_trainer("search_separate_async")
class SearchPPOTrainerSeparateAsync(RunReportMixin, GuardMixin, SearchMetricsMixin, PPOTrainerSeparateAsync):
    pass
