"""The search agent on OpenRLHF 0.11 (R1-Searcher's host framework): an ``AgentExecutor`` for
``--train.agent_func_path``, a thin adapter over the core search step and rewards.

OpenRLHF's own multi-turn executor (``MultiTurnAgentExecutor``) runs the episode: it tokenises the prompt once,
calls the vLLM engine with token ids, hands each action's text to :class:`SearchAgentInstance`, appends the
feedback text it returns (tokenised alone; outside the action ranges, so ``action_mask`` 0 and rollout log-prob
0) and sums the step rewards. This module adds:

- stop strings: each episode's sampling parameters stop at the dialect's query close tag, kept in the output;
- the search: an action that ends at a query close tag gets the core search step's result block as feedback
  (a failed search is a notice in that block, counted, never an exception);
- the reward: every step scores the episode as it stands with :func:`research_plugin.compute_score` on the whole
  response; after a search that is the response cut off (``ended_by_eos`` false), because the executor ends the
  episode without another step when the result block uses up the length budget. OpenRLHF sums the steps'
  ``rewards`` and keeps the last step's ``scores`` and ``extra_logs``, so each step returns the standing score as
  ``scores``, the standing score minus what earlier steps paid as ``rewards``, and the reward parts and the search
  counters as ``extra_logs``: every episode, however it ends, has its scheme's score and the same log keys (the
  replay buffer needs the same keys in every sample of a batch). The action that is not a query ends the episode;
  it ended by EOS when the engine's ``finish_reason`` is ``stop`` (``length`` and ``abort`` cut it off). An
  episode the budget ended after a search is marked ``truncated`` for OpenRLHF too.

Settings (read once per rollout actor; OpenRLHF builds the executor with no arguments): a YAML or JSON file named
by ``RESEARCH_PLUGIN_AGENT_CONFIG``, or the same as inline JSON in ``RESEARCH_PLUGIN_AGENT_JSON``::

    search_agent: {dialect: r1_searcher, retriever: http://10.0.0.5:8000/retrieve, top_k: 5, max_searches: 8}
    reward: {scheme: r1_stage2, format_penalty: 2.0}    # compute_score's scheme and options
    opens_think: true                                   # the prompts open a think block (R1-Searcher's)

A row's label (``--data.label_key label`` of ``research-plugin prepare``'s rows) is JSON with its gold answers
and what verl rows keep in ``extra_info``: ``{"answers": [...], "data_source", "dialect", "scheme",
"opens_think", "search": {...}}``; a label that is not such JSON is taken as the gold answer itself. The row's
settings are resolved with verl's agent loop's rules (:mod:`research_plugin.core.row_settings`).
"""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor

from ..core.dialects import Dialect
from ..core.rewards import check_reward_kwargs, compute_score
from ..core.row_settings import row_settings
from ..core.search_step import SearchAgentConfig, SearchStep
from ..core.settings import SettingsError, as_mapping, check_keys, parse_json, read_mapping_file, to_bool
from ..core.tokenizing import encode_lines

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
    def from_mapping(cls, data: Mapping, where: str = "agent settings") -> AgentSettings:
        """Settings checked (:mod:`research_plugin.core.settings`): unknown keys, wrong types and values out of
        range raise a ``SettingsError`` naming the key, the value and ``where`` they came from."""
        data = as_mapping(data, where)
        check_keys(data, [f.name for f in fields(cls)], where, "agent settings")
        search = as_mapping(data.get("search_agent"), f"{where}: search_agent")
        cfg = SearchAgentConfig.merged(search, where=f"{where}: search_agent")
        if not cfg.mask_results:  # fails at start-up, not in an episode
            raise SettingsError(
                f"{where}: search_agent: mask_results=false is verl-only: OpenRLHF masks the agent's feedback itself "
                "(outside action ranges)"
            )
        reward = check_reward_kwargs(data.get("reward"), f"{where}: reward")
        opens = data.get("opens_think")
        opens = None if opens is None else to_bool(opens, "opens_think", where)
        return cls({k: getattr(cfg, k) for k in search}, reward, opens)


def load_settings(environ: Mapping[str, str] | None = None) -> AgentSettings:
    """The agent's settings from the environment (see the module docstring); defaults when none are given. Malformed
    JSON or YAML, an unreadable file and a bad setting are errors naming the variable or the file."""
    environ = os.environ if environ is None else environ
    if environ.get(JSON_ENV):
        where = f"environment variable {JSON_ENV}"
        return AgentSettings.from_mapping(as_mapping(parse_json(environ[JSON_ENV], where), where), where)
    if environ.get(CONFIG_ENV):
        where = f"file {environ[CONFIG_ENV]} ({CONFIG_ENV})"
        return AgentSettings.from_mapping(read_mapping_file(environ[CONFIG_ENV], where), where)
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
    paid: float = 0.0
    """The sum of the rewards the steps so far returned, as OpenRLHF sums them: the last standing score."""
    finished: bool = False
    """A step ended the episode (else the budget did, after a search)."""


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
        text = states["observation_text"] + action
        ended = ep.finish_reason == "stop"  # EOS or a stop string; "length" / "abort": cut off
        if ended and ep.step.wants_search(action):
            block = await ep.step.result_block(action)
            ep.step.appended(len(encode_lines(ep.tokenizer, block)))
            sampling_params = states.get("sampling_params")
            return self._scored(text + block, False, environment_feedback=block, sampling_params=sampling_params)
        ep.finished = True
        return self._scored(text, ended, environment_feedback="", done=True)

    def _scored(self, text: str, ended_by_eos: bool, done: bool = False, **result: Any) -> dict:
        """A step's result with the score of the episode as it stands, ``text`` (see the module docstring)."""
        ep = self.episode
        response = _without_end_tokens(text[len(self.prompt_text) :], ep.tokenizer)
        counters = ep.step.counters.as_dict()
        extra_info = {
            **ep.row,
            **counters,
            "dialect": ep.step.dialect.name,
            "opens_think": ep.opens_think,
            "ended_by_eos": ended_by_eos,
        }
        parts = compute_score(
            ep.row.get("data_source", "openrlhf"), response, ep.row.get("answers"), extra_info=extra_info, **ep.reward
        )
        score = float(parts["score"])
        reward, ep.paid = score - ep.paid, score
        logs = {k: float(v) for k, v in {**parts, **counters}.items()}
        scores = torch.tensor(score, dtype=torch.float64)
        rewards = torch.tensor(reward, dtype=torch.float64)
        return {"rewards": rewards, "scores": scores, "done": done, "extra_logs": logs, **result}


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
        """The settings of one row: the agent's, then what the row's label says
        (:func:`research_plugin.core.row_settings.row_settings`)."""
        row = parse_label(label)
        s = self.settings
        search = {"agent settings: search_agent": s.search_agent}
        resolved = row_settings(row, search, scheme=s.reward.get("scheme"), opens_think=s.opens_think)
        reward = {**s.reward, "scheme": resolved.scheme}
        step = SearchStep(resolved.search, tokenizer)
        return Episode(step, row, reward, resolved.opens_think, tokenizer)

    async def execute(self, prompt, label, sampling_params, max_length: int, hf_tokenizer, llm_engine, images=None):
        episode = self.episode(label, hf_tokenizer)
        params = _with_stop(sampling_params, episode.step.dialect)
        token = _episode.set(episode)
        try:
            engine = _RecordingEngine(llm_engine, episode)
            result = await super().execute(prompt, label, params, max_length, hf_tokenizer, engine, images)
        finally:
            _episode.reset(token)
        if not episode.finished:  # the budget ran out after a search: the response was cut off
            result["truncated"] = True
        return result


def _with_stop(sampling_params: Any, dialect: Dialect) -> Any:
    """A copy of vLLM sampling parameters that stops at the query close tag and keeps it in the output."""
    params = sampling_params.clone() if hasattr(sampling_params, "clone") else deepcopy(sampling_params)
    stops = [params.stop] if isinstance(params.stop, str) else list(params.stop or [])
    params.stop = [*stops, dialect.stop] if dialect.stop not in stops else stops
    params.include_stop_str_in_output = True
    return params
