"""verl swallows plugin import errors: check in a fresh interpreter that ``import verl`` alone registers us."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

PROBE = """
import json, verl
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
import hydra.utils
entry = _agent_loop_registry.get("search_agent")
cls = hydra.utils.get_class(entry["_target_"]) if entry else None
from verl.plugin.platform.platform_manager import PlatformRegistry
from verl.workers.rollout.base import _ROLLOUT_REGISTRY
from verl.workers.rollout.replica import RolloutReplicaRegistry
from verl.trainer.ppo.v1 import trainer_base
import verl.utils.distributed as dist
import verl.workers.engine_workers as engine_workers
import verl.trainer.main_ppo as main_ppo
print(json.dumps({"entry": entry, "cls": cls.__name__ if cls else None,
                  "base": [b.__name__ for b in cls.__mro__] if cls else [],
                  "platform": getattr(PlatformRegistry.get("cpu"), "__name__", None),
                  "replica": "hf" in RolloutReplicaRegistry._registry,
                  "rollout": _ROLLOUT_REGISTRY.get(("hf", "async")),
                  "sim": [RolloutReplicaRegistry.get("sim").__name__ if "sim" in RolloutReplicaRegistry._registry
                          else None, _ROLLOUT_REGISTRY.get(("sim", "async"))],
                  "trainers": sorted(k for k in trainer_base.TRAINER_REGISTRY if k.startswith("search_")),
                  "pg_hook": [getattr(m.initialize_global_process_group_ray, "research_plugin_cpu", False)
                              for m in (dist, engine_workers)],
                  "select_hook": getattr(main_ppo.auto_set_device, "research_plugin_cpu", False)}))
"""


def probe(**env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entry_point_is_declared():
    eps = [ep for ep in entry_points(group="verl.plugins") if ep.name == "research_plugin"]
    assert [ep.value for ep in eps] == ["research_plugin.verl.plugin"]


def test_import_verl_registers_search_agent():
    got = probe(VERL_USE_EXTERNAL_PLUGINS="auto")
    assert got["entry"] == {"_target_": "research_plugin.verl.agent_loop.SearchAgentLoop"}
    assert "AgentLoopBase" in got["base"]


def test_import_verl_registers_cpu_platform_hf_rollout_and_trainer_modes():
    got = probe(VERL_USE_EXTERNAL_PLUGINS="auto")
    assert got["platform"] == "PlatformCPU"
    assert got["replica"] and got["rollout"] == "research_plugin.verl.hf_rollout.HFServerAdapter"
    assert got["sim"] == ["SimReplica", "research_plugin.verl.sim_rollout.SimServerAdapter"]
    assert got["trainers"] == ["search_colocate_async", "search_separate_async", "search_sync"]
    # verl's process-group helper is hooked, also where a verl module bound it by name
    assert got["pg_hook"] == [True, True]
    # and the launcher's auto_set_device, where a config selects the cpu platform (test_cpu_platform.py)
    assert got["select_hook"] is True


def test_registration_comes_from_the_entry_point():
    got = probe(VERL_USE_EXTERNAL_PLUGINS="none")
    assert got["entry"] is None and got["platform"] is None and not got["replica"] and got["trainers"] == []
    assert got["sim"] == [None, None]
    assert got["pg_hook"] == [False, False] and got["select_hook"] is False
