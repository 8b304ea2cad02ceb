"""Entry point that verl imports in every process (``verl.plugins`` group in pyproject.toml).

Importing this module registers, with verl's own registries:
- the ``search_agent`` agent loop (``verl.experimental.agent_loop.register``);
- the ``cpu`` platform (``PlatformRegistry``; ``VERL_PLATFORM=cpu`` or auto-detected with a CPU-only torch);
- the ``hf`` rollout backend (``RolloutReplicaRegistry`` + the trainer-side rollout registry): HF transformers
  generation on CPU;
- the ``search_sync`` / ``search_colocate_async`` / ``search_separate_async`` trainer modes
  (``register_trainer``): verl's trainers plus per-step search metrics.

The reward is a plain function verl loads by path: ``reward.custom_reward_function.path=pkg://research_plugin``,
``name=compute_score``. No policy-loss hook is registered: verl's ``response_mask`` already drives the policy
loss, KL and entropy, and the agent loop sets it to 0 on every retrieved token.
"""

from . import cpu_platform

cpu_platform.install()  # first: the imports below load verl modules that bind verl's process-group helper

from . import agent_loop, hf_rollout, search_metrics  # noqa: E402, F401, I001  (import = register)
from .assets import register_resolvers  # noqa: E402

hf_rollout.register()
register_resolvers()

REGISTERED_AGENT_LOOPS = ("search_agent",)
REGISTERED_TRAINERS = ("search_sync", "search_colocate_async", "search_separate_async")
