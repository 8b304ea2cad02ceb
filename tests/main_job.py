"""The main job as the README runs it (``python -m verl.trainer.main_ppo`` on the ``tiny_cpu_grpo`` recipe), run once
per rollout engine and shared by the tests that check it: ``test_cpu_grpo`` reads its logs, checkpoint and summary,
``test_learning`` its validations. The command is ``bench/learning.py``'s, so the learning check is the benchmark's
run, shortened."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
SHM = Path("/dev/shm")
SHM_PREFIXES = ("psm_", "verl_weights_", "sem.loky-")
LEARNING_STEPS = 10
"""The hf run's steps: the learning check's (validated before training and after the last step)."""
VLLM_STEPS = 2


def load_bench(name: str):
    """A ``bench/`` script as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def shm_segments() -> set[str]:
    return {p.name for p in SHM.glob("*") if p.name.startswith(SHM_PREFIXES)} if SHM.is_dir() else set()


def run_main_job(out: Path, engine: str) -> dict:
    """The recipe for :data:`LEARNING_STEPS` steps with the ``hf`` engine (RL seed 1), or :data:`VLLM_STEPS` with
    verl's vLLM rollout on vLLM's CPU build; what it logged, wrote and left in ``/dev/shm``."""
    steps = LEARNING_STEPS if engine == "hf" else VLLM_STEPS
    extra = [] if engine == "hf" else [f"+rollout_engine={engine}"]
    cmd = load_bench("learning").job_command("default", 1, steps, steps, out, None, extra)
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    shm_before = shm_segments()
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    (out / "log.txt").write_text(log)
    assert proc.returncode == 0, log[-6000:]
    return {"engine": engine, "steps": steps, "log": log, "ckpt": out / "run", "shm_before": shm_before}
