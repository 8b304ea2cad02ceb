"""The cpu platform in a fresh interpreter, as a verl worker process would see it after ``import verl``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("selection", [{"VERL_PLATFORM": "cpu"}, {}], ids=["VERL_PLATFORM=cpu", "auto-detected"])
def test_cpu_platform_trains_with_gloo_and_the_fsdp_engine(selection, monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)  # auto-detection unless the case sets it
    got = probe(**selection)
    assert got["device"] == "cpu" and got["backend"] == "gloo" and got["device_id"] == "cpu"
    assert got["resource"] == "GPU"  # Ray's logical slots for verl's trainer processes
    assert got["pg_backend"] in ("gloo", "cpu:gloo") and got["all_reduce"] == [1.0, 1.0]
    assert got["engine"] == "FSDPEngineWithLMHead"
    assert got["mem"] == [True, True] and got["rng_restored"] and got["empty_cache"]


def test_search_metrics_aggregate_reward_parts_and_loop_counters():
    from research_plugin.verl.search_metrics import search_metrics

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
