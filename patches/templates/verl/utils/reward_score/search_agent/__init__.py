"""Scoring of search-augmented question answering: ReSearch, R1-Searcher and Search-R1 rewards.

Name it as the custom reward function of a run that uses the ``search_agent`` agent loop::

    reward.custom_reward_function.path=pkg://verl.utils.reward_score.search_agent
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.scheme=research   # or r1_stage1, r1_stage2, search_r1_em

:mod:`.answer_metrics` (EM, F1, cover-EM), :mod:`.dialects` (the tags), :mod:`.format_check` and :mod:`.rewards`
(the schemes) are plain Python and numpy.
"""

from .rewards import compute_score

__all__ = ["compute_score"]
