"""``search_agent``: verl agent loop that interleaves generation with retrieval (a thin adapter over the search
step that every framework shares, :class:`SearchStep`).

The policy generates until it closes a query tag (the dialect's stop string); the core search step turns that
segment into a result block, whose tokens get ``response_mask`` 0 and log-prob 0; generation continues until EOS,
the response budget, or a stop that is not a query. Sampled token ids and log-probs are kept exactly as the server
returned them; only result blocks are tokenised here. Whether the trajectory ended by EOS (not by the budget or an
abort) goes to the reward as ``extra_info["ended_by_eos"]`` (ReSearch scores a truncated response 0), with the
search step's counters. A row whose prompt opens a think block (``extra_info["opens_think"]``, R1-Searcher's
prompts) gets the think open tag after the chat template's generation prompt; a raw (base-model) prompt carries it
in its text already.

Settings (:class:`SearchAgentConfig`) are resolved per row by :func:`row_settings`, later ones winning: their
defaults, the dialect of the reward scheme
(``reward.custom_reward_function.reward_kwargs.scheme``, else the row's ``extra_info["scheme"]``), a top-level
``search_agent`` block of the trainer config, keyword arguments of an ``agent_loop_config_path`` entry, a row's
``extra_info["search"]`` dict, and the row's ``extra_info["dialect"]`` (the tags its prompt teaches, as
``research-plugin prepare`` writes it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register
from verl.utils.rollout_trace import rollout_trace_op

from ..core.dialects import get_dialect
from ..core.row_settings import RowSettings, row_settings
from ..core.search_step import CPUMeter, SearchAgentConfig, SearchStep
from ..core.tokenizing import decode, encode_lines

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))


@dataclass
class _Trajectory:
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: array = field(default_factory=lambda: array("d"))
    extra_fields: dict[str, Any] = field(default_factory=dict)
    generations: int = 0
    generate_s: float = 0.0
    num_preempted: int = -1

    def append(self, ids: list[int], mask: int, logprobs: list[float] | None) -> None:
        self.response_ids += ids
        self.response_mask += [mask] * len(ids)
        if logprobs is None or len(logprobs) != len(ids):
            self.response_logprobs.extend(array("d", bytes(8 * len(ids))))
        else:
            self.response_logprobs.extend(array("d", logprobs))  # floats, converted in C


def _to_dict(x: Any) -> dict:
    if x is None:
        return {}
    if isinstance(x, DictConfig):
        return OmegaConf.to_container(x, resolve=True)
    return dict(x) if isinstance(x, Mapping) else {}


# verl makes an agent loop per trajectory, while its config and tokenizer live as long as the worker: what is
# derived from them once is kept here
_TRAINER_SETTINGS: dict[int, tuple[Any, dict, str | None]] = {}
"""id(trainer config) -> (the config, its ``search_agent`` block, its reward scheme)."""
_ROW_SETTINGS: dict[tuple, RowSettings] = {}
"""What :func:`row_settings` resolved, by everything it read."""
_TAIL_TOKENS = 64
"""Tokens at the end of a generated segment that are decoded first (:meth:`SearchAgentLoop._segment`)."""


@register("search_agent")
class SearchAgentLoop(AgentLoopBase):
    """Generate, search, append results (masked), repeat. See the module docstring."""

    def __init__(self, *args, **kwargs):
        known = {f.name for f in dataclasses.fields(SearchAgentConfig)}
        self._loop_settings = {k: kwargs.pop(k) for k in list(kwargs) if k in known}
        super().__init__(*args, **kwargs)
        self.response_length = self.rollout_config.response_length
        cached = _TRAINER_SETTINGS.get(id(self.config))
        if cached is None or cached[0] is not self.config:  # read once per trainer config, not per trajectory
            scheme = OmegaConf.select(self.config, "reward.custom_reward_function.reward_kwargs.scheme")
            cached = _TRAINER_SETTINGS[id(self.config)] = (
                self.config,
                _to_dict(self.config.get("search_agent")),
                scheme,
            )
        _, self._trainer_settings, self._scheme = cached

    def _settings_for(self, extra_info: Mapping) -> RowSettings:
        """The row's settings (:func:`row_settings`), resolved once per distinct combination of what they read."""
        key = (repr(self._trainer_settings), self._scheme, repr(self._loop_settings),
               *(repr(extra_info.get(k)) for k in ("scheme", "search", "dialect", "opens_think")))  # fmt: skip
        found = _ROW_SETTINGS.get(key)
        if found is None:
            settings = {
                "trainer config: search_agent": self._trainer_settings,
                "agent loop config": self._loop_settings,
            }
            found = row_settings(extra_info, settings, scheme=self._scheme)
            if len(_ROW_SETTINGS) >= 1024:
                _ROW_SETTINGS.clear()
            _ROW_SETTINGS[key] = found
        return found

    async def _prompt_ids(self, raw_prompt: Any, row: RowSettings, extra_info: Mapping) -> list[int]:
        if isinstance(raw_prompt, str):
            messages = [{"role": "user", "content": raw_prompt}]
        else:
            messages = [dict(m) for m in raw_prompt]
        cfg = row.search
        fmt = cfg.prompt_format
        if fmt == "auto":
            base = extra_info.get("template") == "base" or not getattr(self.tokenizer, "chat_template", None)
            fmt = "raw" if base else "chat"
        if fmt == "chat":
            ids = await self.ct_build_initial_tokens(messages)
            if row.opens_think:
                ids = list(ids) + encode_lines(self.tokenizer, get_dialect(cfg.dialect).think_open)
            return ids
        text = "\n".join(str(m.get("content", "")) for m in messages)
        ids = await self.loop.run_in_executor(None, lambda: self.tokenizer.encode(text))
        return self._cap_text_prompt_length(list(ids))

    def _segment(self, tokens: list[int], dialect) -> str:
        """A generated segment's text, or only its end when that shows all the loop reads of it: whether it closed a
        query (the close tag sits at the very end) and the query (decoding every token of a long segment costs more
        than the rest of a turn)."""
        if len(tokens) > _TAIL_TOKENS:
            tail = decode(self.tokenizer, tokens[-_TAIL_TOKENS:])
            close = tail.rfind(dialect.query_close)
            if close < 0 or tail.rfind(dialect.query_open, 0, close) >= 0:
                return tail
        return decode(self.tokenizer, tokens)

    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        cpu = CPUMeter()
        extra_info = _to_dict(kwargs.get("extra_info"))
        row = self._settings_for(extra_info)
        cfg = row.search
        step = SearchStep(cfg, self.tokenizer, cpu)
        dialect = step.dialect
        prompt_ids = await cpu.wait(self._prompt_ids(kwargs["raw_prompt"], row, extra_info))
        request_id = f"det-{int(priority)}" if getattr(self.rollout_config, "full_determinism", False) else uuid4().hex
        stop_ids = encode_lines(self.tokenizer, dialect.stop)  # kept: a line the loop tokenises for every trajectory
        traj = _Trajectory()
        ended_by_eos = False

        while (budget := self.response_length - len(traj.response_ids)) > 0:
            params = {
                **sampling_params,
                "max_tokens": budget,
                "stop": [dialect.stop],
                "include_stop_str_in_output": True,
            }
            if len(stop_ids) == 1:  # engines without stop strings (SGLang) still stop on a one-token close tag
                params["stop_token_ids"] = sorted(set(params.get("stop_token_ids") or []) | set(stop_ids))
            start = time.perf_counter()
            out = await cpu.wait(
                self.server_manager.generate(
                    request_id=request_id, prompt_ids=prompt_ids + traj.response_ids, sampling_params=params
                )
            )
            traj.generate_s += time.perf_counter() - start
            traj.generations += 1
            if out.num_preempted is not None:
                traj.num_preempted = max(traj.num_preempted, 0) + out.num_preempted
            for key, value in out.extra_fields.items():  # global_steps bookkeeping of the rollout server
                if key == "finish_reason" or (key == "min_global_steps" and key in traj.extra_fields):
                    continue
                traj.extra_fields[key] = value
            tokens = list(out.token_ids)[:budget]
            traj.append(tokens, 1, list(out.log_probs)[: len(tokens)] if out.log_probs else None)
            # a server that cut the output at its own limit says so (``finish_reason``): truncated, like no budget
            if not tokens or out.stop_reason == "aborted" or out.extra_fields.get("finish_reason") == "length":
                break
            segment = self._segment(tokens, dialect)
            at_query = step.wants_search(segment)
            if len(traj.response_ids) >= self.response_length:
                ended_by_eos = not at_query and tokens[-1] == self.tokenizer.eos_token_id
                break
            if not at_query:
                ended_by_eos = True  # EOS (or another stop): the trajectory is finished
                break
            result_ids = await step.result_ids(segment)
            result_ids = result_ids[: self.response_length - len(traj.response_ids)]
            traj.append(result_ids, 0 if cfg.mask_results else 1, None)
            step.appended(len(result_ids))

        traj.extra_fields.update(
            **step.counters.as_dict(),
            ended_by_eos=ended_by_eos,
            dialect=dialect.name,
            agent_cpu_s=cpu.total(),
            turn_scores=[],
            tool_rewards=[],
        )
        want_logprobs = bool(sampling_params.get("logprobs"))
        # built without validation: every field has its declared type here, and pydantic's check of every id cost
        # ~0.1 ms a trajectory
        return AgentLoopOutput.model_construct(
            prompt_ids=prompt_ids,
            response_ids=traj.response_ids,
            response_mask=traj.response_mask,
            response_logprobs=traj.response_logprobs.tolist() if want_logprobs else None,
            num_turns=1 + traj.generations + step.results,
            metrics=AgentLoopMetrics.model_construct(
                generate_sequences=traj.generate_s,
                tool_calls=step.counters.retrieval_s,
                num_preempted=traj.num_preempted,
            ),
            extra_fields=traj.extra_fields,
        )
