"""Entry point that verl imports in every process (``verl.plugins`` group in pyproject.toml).

Importing this module registers, with verl's own registries:
- the ``search_agent`` agent loop (``verl.experimental.agent_loop.register``).

The reward is a plain function verl loads by path: ``reward.custom_reward_function.path=pkg://research_plugin``,
``name=compute_score``. No policy-loss hook is registered: verl's ``response_mask`` already drives the policy
loss, KL and entropy, and the agent loop sets it to 0 on every retrieved token.
"""

from . import agent_loop  # noqa: F401  (registers "search_agent")

REGISTERED_AGENT_LOOPS = ("search_agent",)
