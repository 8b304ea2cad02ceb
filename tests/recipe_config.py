"""A shipped recipe composed by Hydra as verl's launcher composes it, for tests that check configs without running."""

from __future__ import annotations

from research_plugin.recipes import recipes_dir


def compose_recipe(name: str, overrides=()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(recipes_dir()), version_base=None):
        return compose(config_name=name, overrides=list(overrides))
