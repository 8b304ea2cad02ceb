"""The plugin's settings in a verl trainer config, checked in the driver before any work starts.

A misspelled or mistyped setting must stop a run at once, with one clear message, not in every agent-loop call or
reward call of every step (``+search_agent.top_kk=3`` once gave 5,120 error lines and no trained step; an unknown
reward option was dropped). :func:`check_config` checks, with :mod:`research_plugin.core.settings`:

- the top-level ``search_agent`` block (:class:`SearchAgentConfig` fields, the retriever spec included);
- the ``search_agent`` entries of ``actor_rollout_ref.rollout.agent.agent_loop_config_path`` (their keyword
  arguments are the same settings);
- ``reward.custom_reward_function.reward_kwargs`` when the reward function is ours (``compute_score`` of
  ``research_plugin``): scheme, dialect, eos_token and the :class:`~research_plugin.core.rewards.Options` fields;
- the ``guard`` block (:func:`check_guard`).

:func:`install` runs it from verl's own start-up validation, ``verl.utils.config.validate_config``, which
``main_ppo`` (and the v0 and one-step-off-policy entry points) call in the driver right after Hydra composed the
config, before Ray starts; the plugin hooks it when ``verl.utils.config`` is imported (:mod:`.import_hooks`).
A bad setting raises :class:`~research_plugin.core.settings.SettingsError`; Hydra prints it and exits 1.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import OmegaConf

COMMAND_LINE = "verl config (recipe / command line)"
OURS = "research_plugin"


def check_config(config: Any) -> None:
    """Raise ``SettingsError`` for the first bad plugin setting in a composed verl config (module docstring)."""
    from ..core.rewards import check_reward_kwargs
    from ..core.search_step import SearchAgentConfig
    from ..core.settings import SettingsError, as_mapping

    block = config.get("search_agent")
    if block is not None:
        SearchAgentConfig.merged(block, where=f"{COMMAND_LINE}: search_agent")
    path = OmegaConf.select(config, "actor_rollout_ref.rollout.agent.agent_loop_config_path", default=None)
    if path:
        from verl.utils.import_utils import resolve_config_path

        where = f"file {path} (actor_rollout_ref.rollout.agent.agent_loop_config_path)"
        try:
            entries = OmegaConf.to_container(OmegaConf.load(resolve_config_path(path)), resolve=True)
        except Exception as e:  # unreadable or malformed: verl would fail on it later, less clearly
            raise SettingsError(f"{where}: cannot read it: {type(e).__name__}: {e}") from None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and _is_search_agent(entry):
                settings = {k: v for k, v in entry.items() if k not in ("name", "_target_")}
                SearchAgentConfig.merged(settings, where=f"{where}: entry {entry.get('name')!r}")
    if config.get("guard") is not None:
        check_guard(config)
    fn = OmegaConf.select(config, "reward.custom_reward_function", default=None) or {}
    if _is_our_reward(fn.get("path"), fn.get("name")):
        where = f"{COMMAND_LINE}: reward.custom_reward_function.reward_kwargs"
        check_reward_kwargs(as_mapping(fn.get("reward_kwargs"), where), where)


def check_guard(config: Any) -> None:
    """The ``guard`` block (:mod:`research_plugin.core.guard`): its settings, and for ``rollback`` settings to change
    that exist in this config and checkpoints to roll back to."""
    from ..core.settings import SettingsError
    from .guard import flatten, guard_config

    where = f"{COMMAND_LINE}: guard"
    guard = guard_config(config)
    missing = object()
    for key in flatten(guard.rollback_overrides):
        if OmegaConf.select(config, key, default=missing) is missing:
            raise SettingsError(f"{where}: rollback_overrides: {key!r} is not a setting of this config")
    if guard.action == "rollback":
        if not guard.rollback_overrides:
            raise SettingsError(
                f"{where}: action rollback needs rollback_overrides, the setting to change when rolling back (e.g. "
                "{actor_rollout_ref: {actor: {optim: {lr: 1.0e-4}}}})"
            )
        if int(config.trainer.get("save_freq", -1) or -1) <= 0:
            raise SettingsError(f"{where}: action rollback needs checkpoints to roll back to (trainer.save_freq > 0)")


def _is_search_agent(entry: dict) -> bool:
    return entry.get("name") == "search_agent" or str(entry.get("_target_", "")).endswith(".SearchAgentLoop")


def _is_our_reward(path: Any, name: Any) -> bool:
    """Whether verl's ``custom_reward_function`` ``path`` / ``name`` load this package's ``compute_score``."""
    if name != "compute_score" or not isinstance(path, str) or not path:
        return False
    if path.startswith("pkg://"):
        module = path.removeprefix("pkg://").replace("/", ".")
        return module == OURS or module.startswith(f"{OURS}.")
    package = Path(__file__).resolve().parents[1]
    return Path(path.removeprefix("file://")).resolve().is_relative_to(package)


def install(config_module: ModuleType) -> None:
    """Make ``verl.utils.config.validate_config`` run :func:`check_config` first (a hook for
    :func:`.import_hooks.when_imported`)."""
    original = config_module.validate_config
    if getattr(original, "_research_plugin_checks", False):
        return

    @functools.wraps(original)
    def validate_config(config, *args, **kwargs):
        check_config(config)
        from .guard import install as install_guard

        install_guard()  # the launcher's run_ppo: a guard stop exits with its reason, a rollback starts again
        return original(config, *args, **kwargs)

    validate_config._research_plugin_checks = True
    config_module.validate_config = validate_config
    utils = sys.modules.get("verl.utils")
    if utils is not None and getattr(utils, "validate_config", None) is original:
        utils.validate_config = validate_config
