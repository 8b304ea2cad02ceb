"""What one dataset row runs with, resolved the same way by every framework adapter, so that a row means the same
thing whichever framework trains on it.

A row's info is verl's ``extra_info`` (another framework's adapter reads the same keys from its own row); prepared
rows carry ``dialect`` (the tags the row's prompt teaches), ``scheme`` (its reward scheme) and ``opens_think``, and a
hand-written row may add a ``search`` dict of :class:`SearchAgentConfig` fields. The search settings come from,
later ones winning:

1. :class:`SearchAgentConfig`'s defaults;
2. the dialect of the reward scheme: the framework's scheme, else the row's ``scheme``;
3. the framework's settings, in the order the adapter gives them (verl: the trainer config's ``search_agent``
   block, then the ``agent_loop_config_path`` entry);
4. the row's ``search`` dict;
5. the row's ``dialect``: its prompt was written in those tags, and the reward reads the same key, so the agent
   always stops, searches and is scored in the dialect the prompt asked for (a different ``search.dialect`` in the
   same row is overruled, with a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .rewards import SCHEMES
from .search_step import SearchAgentConfig
from .settings import as_mapping, check_choice, to_bool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowSettings:
    search: SearchAgentConfig
    scheme: str
    """The reward scheme: the framework's, else the row's, else ``research`` (:func:`compute_score`'s default)."""
    opens_think: bool
    """The prompt opens a think block: the framework's setting when it has one, else the row's ``opens_think``."""


def row_settings(
    info: Mapping[str, Any] | None,
    settings: Mapping[str, Mapping[str, Any] | None] | None = None,
    *,
    scheme: str | None = None,
    opens_think: bool | None = None,
) -> RowSettings:
    """The settings of the row whose info is ``info``, under the framework's search ``settings`` (``{where: source}``,
    lowest first; ``where`` names the source in errors), reward ``scheme`` and ``opens_think`` (``None``: the framework
    sets none); see the module docstring. A bad setting raises :class:`~.settings.SettingsError` naming its source."""
    info = info or {}
    row = f"row {info.get('id', info.get('index', '?'))!r}"
    where = "reward settings" if scheme else row
    scheme = check_choice(scheme or info.get("scheme") or "research", SCHEMES, where, "reward scheme")
    row_search = as_mapping(info.get("search"), f"{row}: search")
    sources = {f"reward scheme {scheme!r}": {"dialect": SCHEMES[scheme].dialect}, **(settings or {})}
    sources[f"{row}: search"] = row_search
    dialect = info.get("dialect")
    if dialect:
        if row_search.get("dialect") not in (None, dialect):
            logger.warning(
                "%s: search.dialect %r is overruled by the row's dialect %r (the tags its prompt teaches)",
                row,
                row_search["dialect"],
                dialect,
            )
        sources[f"{row}: dialect"] = {"dialect": dialect}
    if opens_think is None:
        opens_think = info.get("opens_think") is not None and to_bool(info["opens_think"], "opens_think", row)
    return RowSettings(SearchAgentConfig.merged(*sources.values(), where=list(sources)), scheme, opens_think)
