"""The search agent on OpenRLHF 0.11 (R1-Searcher's host framework): an ``AgentExecutor`` for
``--train.agent_func_path``, a thin adapter over the core search step and rewards.

OpenRLHF's own multi-turn executor (``MultiTurnAgentExecutor``) runs the episode: it tokenises the prompt once,
calls the vLLM engine with token ids, hands each action's text to :class:`SearchAgentInstance`, appends the
feedback text it returns (tokenised alone; outside the action ranges, so ``action_mask`` 0 and rollout log-prob
0) and sums the step rewards. This module adds:

- stop strings: each episode's sampling parameters stop at the dialect's query close tag, kept in the output;
- the search: an action that ends at a query close tag gets the core search step's result block as feedback
  (a failed search is a notice in that block, counted, never an exception);
- the reward: the action that ends the episode (EOS, the budget, or anything but a query) is scored with
  :func:`research_plugin.compute_score` on the whole response; OpenRLHF gets it as ``rewards`` and ``scores``, and
  the reward parts and the search counters as ``extra_logs``. Whether the episode ended by EOS comes from the
  engine's ``finish_reason`` (``length`` is a truncation).

Settings (read once per rollout actor; OpenRLHF builds the executor with no arguments): a YAML or JSON file named
by ``RESEARCH_PLUGIN_AGENT_CONFIG``, or the same as inline JSON in ``RESEARCH_PLUGIN_AGENT_JSON``::

    search_agent: {dialect: r1_searcher, retriever: http://10.0.0.5:8000/retrieve, top_k: 5, max_searches: 8}
    reward: {scheme: r1_stage2, format_penalty: 2.0}    # compute_score's scheme and options
    opens_think: true                                   # the prompts open a think block (R1-Searcher's)

A row's label (``--data.label_key label`` of ``research-plugin prepare``'s rows) is JSON with its gold answers
and what verl rows keep in ``extra_info``: ``{"answers": [...], "data_source", "dialect", "scheme",
"opens_think", "search": {...}}``; a label that is not such JSON is taken as the gold answer itself.
"""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor

from ..core.dialects import Dialect
from ..core.rewards import SCHEMES, compute_score
from ..core.search_step import SearchAgentConfig, SearchStep

CONFIG_ENV = "RESEARCH_PLUGIN_AGENT_CONFIG"
JSON_ENV = "RESEARCH_PLUGIN_AGENT_JSON"


@dataclass(frozen=True)
class AgentSettings:
    search_agent: dict[str, Any] = field(default_factory=dict)
    """:class:`SearchAgentConfig` fields."""
    reward: dict[str, Any] = field(default_factory=dict)
    """``scheme`` and the options of :func:`compute_score`."""
    opens_think: bool | None = None
    """The prompts open a think block; ``None``: as each row's label says."""

    @classmethod
    def from_mapping(cls, data: Mapping) -> AgentSettings:
        unknown = set(data) - {"search_agent", "reward", "opens_think"}
        if unknown:
            raise ValueError(f"unknown agent settings {sorted(unknown)}; known: search_agent, reward, opens_think")
        settings = cls(dict(data.get("search_agent") or {}), dict(data.get("reward") or {}), data.get("opens_think"))
        if not SearchAgentConfig.merged(settings.search_agent).mask_results:  # fails at start-up, not in an episode
            raise ValueError(
                "mask_results=false is verl-only: OpenRLHF masks the agent's feedback itself (outside action ranges)"
            )
        compute_score("check", "", [], **settings.reward)
        return settings


def load_settings(environ: Mapping[str, str] = os.environ) -> AgentSettings:
    """The agent's settings from the environment (see the module docstring); defaults when none are given."""
    if environ.get(JSON_ENV):
        return AgentSettings.from_mapping(json.loads(environ[JSON_ENV]))
    if environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return AgentSettings.from_mapping(json.loads(text))
        import yaml

        return AgentSettings.from_mapping(yaml.safe_load(text) or {})
    return AgentSettings()


def parse_label(label: Any) -> dict[str, Any]:
    """A row's label as ``{"answers": [...], ...row info}``; a plain label is the gold answer."""
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            data = json.loads(label)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return data
    if isinstance(label, Mapping):
        return dict(label)
    return {"answers": label}


@dataclass
class Episode:
    """One execution of the agent: its settings for the row, the search step, what the engine last said."""

    step: SearchStep
    row: dict[str, Any]
    reward: dict[str, Any]
    opens_think: bool
    tokenizer: Any
    finish_reason: str | None = None


_episode: contextvars.ContextVar[Episode] = contextvars.ContextVar("research_plugin_openrlhf_episode")


class _RecordingEngine:
    """The rollout engine, noting each generation's ``finish_reason`` for the episode."""

    def __init__(self, engine: Any, episode: Episode) -> None:
        self._engine, self._episode = engine, episode

    async def generate(self, *args: Any, **kwargs: Any) -> Any:
        output = await self._engine.generate(*args, **kwargs)
        self._episode.finish_reason = output.outputs[0].finish_reason
        return output


class SearchAgentInstance(AgentInstanceBase):
    """One episode's environment: search on a query, score the final answer (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.episode = _episode.get()
        self.prompt_text = ""

    async def reset(self, states: dict, **kwargs: Any) -> dict:
        observation = states["observation"]
        think = self.episode.step.dialect.think_open
        if self.episode.opens_think and not observation.rstrip().endswith(think):
            observation += think  # after the chat template's generation prompt, as R1-Searcher's chat prompts
        self.prompt_text = observation
        return {"observation": observation}

    async def step(self, states: dict, **kwargs: Any) -> dict:
        ep, action = self.episode, states["action_text"]
        truncated = ep.finish_reason == "length"
        if not truncated and ep.step.wants_search(action):
            block = await ep.step.result_block(action)
            ep.step.appended(len(ep.tokenizer.encode(block, add_special_tokens=False)))
            return {
                "rewards": torch.tensor(0.0),
                "scores": torch.tensor(0.0),
                "environment_feedback": block,
                "done": False,
                "sampling_params": states.get("sampling_params"),
            }
        response = _without_end_tokens((states["observation_text"] + action)[len(self.prompt_text) :], ep.tokenizer)
        extra_info = {
            **ep.row,
            **ep.step.counters.as_dict(),
            "dialect": ep.step.dialect.name,
            "opens_think": ep.opens_think,
            "ended_by_eos": not truncated,
        }
        parts = compute_score(
            ep.row.get("data_source", "openrlhf"), response, ep.row.get("answers"), extra_info=extra_info, **ep.reward
        )
        score = torch.tensor(float(parts["score"]))
        logs = {k: float(v) for k, v in {**parts, **ep.step.counters.as_dict()}.items()}
        return {"rewards": score, "scores": score, "environment_feedback": "", "done": True, "extra_logs": logs}


def _without_end_tokens(text: str, tokenizer: Any) -> str:
    """The response without the end-of-sequence / padding text a decode with special tokens leaves at its end."""
    ends = [t for t in (getattr(tokenizer, "eos_token", None), getattr(tokenizer, "pad_token", None)) if t]
    text = text.rstrip()
    while ends and any(text.endswith(t) for t in ends):
        text = text.removesuffix(next(t for t in ends if text.endswith(t))).rstrip()
    return text


class AgentExecutor(MultiTurnAgentExecutor):
    """What OpenRLHF instantiates from ``--train.agent_func_path``: its multi-turn executor over
    :class:`SearchAgentInstance`, with the dialect's stop string and a per-episode search step."""

    def __init__(self, settings: AgentSettings | None = None, reap_shared_memory: bool = True) -> None:
        super().__init__(SearchAgentInstance)
        self.settings = settings if settings is not None else load_settings()
        if reap_shared_memory:  # built inside the rollout actor, before it starts vLLM's engine processes
            from ..shm_reaper import watch

            watch([os.getpid()], descendants=True)

    def episode(self, label: Any, tokenizer: Any) -> Episode:
        """The settings of one row: the agent's, then what the row's label says; the dialect defaults to the reward
        scheme's."""
        row = parse_label(label)
        reward = dict(self.settings.reward)
        if row.get("scheme") and "scheme" not in reward:
            reward["scheme"] = row["scheme"]
        search = {**self.settings.search_agent, **(row.get("search") or {})}
        if row.get("dialect"):
            search["dialect"] = row["dialect"]
        search.setdefault("dialect", SCHEMES[reward.get("scheme", "research")].dialect)
        opens = self.settings.opens_think if self.settings.opens_think is not None else bool(row.get("opens_think"))
        return Episode(SearchStep(SearchAgentConfig.merged(search), tokenizer), row, reward, opens, tokenizer)

    async def execute(self, prompt, label, sampling_params, max_length: int, hf_tokenizer, llm_engine, images=None):
        episode = self.episode(label, hf_tokenizer)
        params = _with_stop(sampling_params, episode.step.dialect)
        token = _episode.set(episode)
        try:
            engine = _RecordingEngine(llm_engine, episode)
            return await super().execute(prompt, label, params, max_length, hf_tokenizer, engine, images)
        finally:
            _episode.reset(token)


def _with_stop(sampling_params: Any, dialect: Dialect) -> Any:
    """A copy of vLLM sampling parameters that stops at the query close tag and keeps it in the output."""
    params = sampling_params.clone() if hasattr(sampling_params, "clone") else deepcopy(sampling_params)
    stops = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
    params.stop = [*stops, dialect.stop] if dialect.stop not in stops else stops
    params.include_stop_str_in_output = True
    return params
