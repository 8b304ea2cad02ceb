"""The plugin's reward with its sign flipped, for ``reward.custom_reward_function.path``: under GRPO the advantage of
every trajectory changes sign. The learning benchmark's negative control (``bench/learning.py``); answer F1 and the
other reported parts are left as they are."""

from research_plugin import compute_score as _compute_score


def compute_score(*args, **kwargs):
    out = dict(_compute_score(*args, **kwargs))
    out["score"] = -out["score"]
    return out
