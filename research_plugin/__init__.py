"""research_plugin: search-augmented RL (ReSearch, R1-Searcher, Search-R1) for stock verl.

Importing this package is cheap and does not import verl. verl loads :mod:`research_plugin.verl.plugin`
through the ``verl.plugins`` entry point, which registers the agent loop and the rest with verl.
"""

from .core.rewards import compute_score

__version__ = "0.1.0"
__all__ = ["compute_score", "__version__"]
