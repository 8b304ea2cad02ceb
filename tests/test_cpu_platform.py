"""The cpu platform in a fresh interpreter, as a verl worker process would see it after ``import verl``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .local_http import free_port

PROBE = """
import json, torch, verl
from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device, get_device_id, get_resource_name
from verl.utils.distributed import initialize_global_process_group_ray
dev = get_torch_device()
free, total = dev.mem_get_info()
state = dev.get_rng_state(); a = torch.rand(3); dev.set_rng_state(state); b = torch.rand(3)
initialize_global_process_group_ray(timeout_second=60)
from verl.workers.engine import EngineRegistry
engine = EngineRegistry.get_engine_cls("language_model", "fsdp2")
out = torch.ones(2)
torch.distributed.all_reduce(out)
print(json.dumps({
    "device": get_device_name(), "backend": get_nccl_backend(), "device_id": get_device_id(),
    "resource": get_resource_name(), "mem": [free > 0, total >= free], "rng_restored": bool(torch.equal(a, b)),
    "pg_backend": str(torch.distributed.get_backend()), "engine": engine.__name__,
    "all_reduce": out.tolist(), "empty_cache": dev.empty_cache() is None,
}))
"""


def probe(**env) -> dict:
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), **env}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_platform_trains_with_gloo_and_the_fsdp_engine():
    got = probe(VERL_PLATFORM="cpu")
    assert got["device"] == "cpu" and got["backend"] == "gloo" and got["device_id"] == "cpu"
    assert got["resource"] == "GPU"  # Ray's logical slots for verl's trainer processes
    assert got["pg_backend"] in ("gloo", "cpu:gloo") and got["all_reduce"] == [1.0, 1.0]
    assert got["engine"] == "FSDPEngineWithLMHead"
    assert got["mem"] == [True, True] and got["rng_restored"] and got["empty_cache"]


DETECT = """
import json, os, verl
from unittest import mock
from verl.plugin.platform.platform_manager import PlatformRegistry, _detect_platform_name
from verl.utils.device import get_device_name
with mock.patch.dict(os.environ, {"VERL_PLATFORM": ""}):  # verl's test_empty_triggers_auto_detection
    detected = _detect_platform_name()
registered = PlatformRegistry.get("cpu") is not None
print(json.dumps({"detected": detected, "device": get_device_name(), "cpu_registered": registered}))
"""


def detect(**env) -> dict:
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "VERL_PLATFORM"}
    out = subprocess.run([sys.executable, "-c", DETECT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_installed_but_not_selected_verl_detects_its_own_platform():
    """verl 0.9.1's ``tests/plugin/test_platform_abstraction.py::TestPlatformDetection::
    test_empty_triggers_auto_detection`` with the plugin installed: verl's own answer, the same as without it."""
    with_plugin, without = detect(), detect(VERL_USE_EXTERNAL_PLUGINS="none")
    assert with_plugin["cpu_registered"] and not without["cpu_registered"]
    assert with_plugin["detected"] in ("nvidia", "huawei", "amd")
    assert with_plugin["detected"] == without["detected"] and with_plugin["device"] == without["device"]
    assert with_plugin["device"] != "cpu"


LAUNCHER = """
import json, os, sys
import verl.trainer.main_ppo as main_ppo  # verl fixes the launcher's platform here, from the environment alone
from hydra import compose, initialize_config_dir
from verl.utils.device import get_device_name
before = get_device_name()
with initialize_config_dir(config_dir=sys.argv[1], version_base=None):
    config = compose(config_name=sys.argv[2])
main_ppo.auto_set_device(config)  # what main_ppo's main does first with the config
print(json.dumps({"before": before, "device": get_device_name(), "trainer_device": config.trainer.device,
                  "env": os.environ.get("VERL_PLATFORM")}))
"""


def launcher(config_dir: str, name: str, **env) -> dict:
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "VERL_PLATFORM" or "VERL_PLATFORM" in env}
    cmd = [sys.executable, "-c", LAUNCHER, config_dir, name]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cpu_recipe_selects_the_platform_in_the_launcher_and_for_ray():
    from omegaconf import OmegaConf

    from research_plugin.recipes import recipes_dir

    recipe = OmegaConf.load(recipes_dir() / "tiny_cpu_grpo.yaml")
    assert recipe.ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM == "cpu"  # every Ray process of the run
    got = launcher(str(recipes_dir()), "tiny_cpu_grpo")
    assert got["before"] != "cpu"  # nothing selected it when verl was imported
    assert got == {"before": got["before"], "device": "cpu", "trainer_device": "cpu", "env": "cpu"}


def test_a_config_that_selects_nothing_keeps_verls_choice():
    import verl

    got = launcher(str(Path(verl.__file__).parent / "trainer" / "config"), "ppo_trainer")
    assert got["device"] == got["before"] != "cpu" and got["env"] is None
    assert got["trainer_device"] == got["device"]  # verl's auto_set_device as it is


def test_an_explicit_verl_platform_wins_over_the_recipe():
    from research_plugin.recipes import recipes_dir

    got = launcher(str(recipes_dir()), "tiny_cpu_grpo", VERL_PLATFORM="nvidia")
    assert got["before"] == got["device"] == "cuda" and got["env"] == "nvidia"


def test_search_metrics_aggregate_reward_parts_and_loop_counters():
    from research_plugin.verl.trainer_modes import search_metrics

    rows = [
        {"num_searches": 2, "retrieved_tokens": 100, "reward_extra_info": {"score": 1.0, "f1": 1.0, "format": 1.0}},
        {"num_searches": 0, "retrieved_tokens": 0, "reward_extra_info": {"score": 0.0, "f1": 0.0, "format": 0.0}},
        None,  # a trajectory without extra fields is skipped, not a crash
        {"num_searches": "bad", "reward_extra_info": {"f1": float("nan")}},
    ]
    m = search_metrics(rows)
    assert m["search/num_searches/mean"] == 1.0 and m["search/num_searches/max"] == 2.0
    assert m["search/f1/mean"] == 0.5 and m["search/format/min"] == 0.0
    assert m["search/retrieved_tokens/mean"] == 50.0
    assert "search/em/mean" not in m  # never reported: left out rather than logged as 0
