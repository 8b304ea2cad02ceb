"""The settings a training run rolled out with, recorded in its folder, so that ``research-plugin eval`` and
``demo`` give a run's policy the searches it was trained and validated with.

When one of the plugin's trainer modes starts ``fit``, it writes :data:`RECORD` into ``trainer.default_local_dir``
(the folder the summary's commands name): the agent loop's settings (the trainer config's ``search_agent`` with
every default filled in), the reward function's keyword arguments (``scheme`` and options), the prompt and
response lengths and the validation files. :func:`run_settings_for` finds it from the run folder or from a
Hugging Face copy inside it (``global_step_N/actor/huggingface``); :func:`choose` takes each setting from the
command line when given there, else from the record, else from the command's default, and says where each came
from. Settings of an ``agent_loop_config_path`` file or of a row's ``extra_info`` are not recorded (rows carry
theirs with them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

RECORD = "research_plugin_run.json"
AGENT_SETTINGS = ("top_k", "max_searches", "max_result_tokens", "search_timeout", "prompt_format")
"""The agent loop's settings (besides the dialect and the retriever) that eval and demo take from a run's record."""


def settings_of(config) -> dict[str, Any]:
    """What :data:`RECORD` holds for a verl trainer config (module docstring)."""
    from omegaconf import OmegaConf

    from ..core.search_step import SearchAgentConfig

    def plain(key: str, default: Any = None) -> Any:
        value = OmegaConf.select(config, key, default=default)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

    agent = SearchAgentConfig.merged(plain("search_agent"), where="search_agent")
    val = plain("data.val_files")
    return {
        "search_agent": asdict(agent),
        "reward_kwargs": dict(plain("reward.custom_reward_function.reward_kwargs") or {}),
        "prompt_length": plain("data.max_prompt_length"),
        "response_length": plain("data.max_response_length"),
        "val_files": [val] if isinstance(val, str) else list(val or []),
    }


def record_run(config, out: str | Path) -> Path:
    """Write :data:`RECORD` for ``config`` into ``out``; its path."""
    path = Path(out) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings_of(config), indent=1, default=str) + "\n", encoding="utf-8")
    return path


def run_settings_for(model: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The record of the run that ``model`` (a run folder, or a ``global_step_N/actor/huggingface`` copy in one)
    came from, and its path; None when there is none (a plain model folder, a run from before the record)."""
    p = Path(model)
    candidates = [p / RECORD]
    if p.parent.name == "actor" and p.parent.parent.name.startswith("global_step_"):
        candidates.append(p.parents[2] / RECORD)
    for path in candidates:
        if path.is_file():
            from ..core.rewards import check_reward_kwargs
            from ..core.search_step import SearchAgentConfig
            from ..core.settings import SettingsError, read_mapping_file

            where = f"run record {path} (delete it to use the defaults)"
            record = read_mapping_file(path, where)
            if not isinstance(record.get("search_agent"), Mapping):
                raise SettingsError(f"{where}: not a run record (no search_agent mapping)")
            SearchAgentConfig.merged(record["search_agent"], where=f"{where}: search_agent")
            check_reward_kwargs(record.get("reward_kwargs"), f"{where}: reward_kwargs")
            return dict(record), path
    return None


def recorded(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A record's settings under the names eval and demo use: the ``search_agent`` fields, ``scheme`` and
    ``reward_options`` (the reward's other keyword arguments), ``prompt_length``, ``response_length``."""
    if not record:
        return {}
    reward = dict(record.get("reward_kwargs") or {})
    out = dict(record["search_agent"])
    if "scheme" in reward:
        out["scheme"] = reward.pop("scheme")
    out["reward_options"] = reward
    for name in ("prompt_length", "response_length"):
        if record.get(name) is not None:
            out[name] = record[name]
    return out


def choose(
    names: tuple[str, ...], given: Mapping[str, Any], record: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Each of ``names`` from ``given`` (not None), else ``record`` (:func:`recorded`), else ``defaults`` (absent
    there: None); and which names came from where (``{"flag": [...], "run": [...], "default": [...]}``)."""
    values: dict[str, Any] = {}
    sources: dict[str, list[str]] = {"flag": [], "run": [], "default": []}
    for name in names:
        if given.get(name) is not None:
            values[name], source = given[name], "flag"
        elif name in record:
            values[name], source = record[name], "run"
        else:
            values[name], source = defaults.get(name), "default"
        sources[source].append(name)
    return values, sources


def describe(values: Mapping[str, Any], sources: Mapping[str, list[str]], path: Path | None) -> str:
    """One line per source saying which settings it gave, and their values."""

    def show(name: str) -> str:
        value = values[name]
        if isinstance(value, Mapping) and "corpus" in value:
            value = value["corpus"]
        return f"{name}={json.dumps(value, default=str) if isinstance(value, (Mapping, list)) else value}"

    label = {"flag": "from the command line", "run": f"from the run ({path})", "default": "defaults"}
    if path is None:
        label["default"] = "defaults (no run record)"
    return "\n".join(
        f"  {label[source]}: {', '.join(show(n) for n in names)}" for source, names in sources.items() if names
    )


def resolve(
    model: str | Path | None, names: tuple[str, ...], given: Mapping[str, Any], defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """Each of ``names`` from ``given`` (the command line, not None), else the record of the run ``model`` comes
    from (:func:`run_settings_for`; an endpoint URL has none), else ``defaults``; and lines saying which came from
    where (:func:`describe`)."""
    remote = model is None or str(model).startswith(("http://", "https://"))
    found = None if remote else run_settings_for(model)
    record, path = found if found else (None, None)
    values, sources = choose(names, given, recorded(record), defaults)
    return values, describe(values, sources, path)
