"""The main job: ``python -m verl.trainer.main_ppo --config-path recipes --config-name tiny_cpu_grpo`` on CPU.

verl's own launcher, Ray, FSDP2 trainer, agent loop and reward loop; our cpu platform, search agent, BM25 retriever
and ReSearch reward. GRPO with each rollout engine: the plugin's ``hf`` backend (the run ``test_learning`` checks
too, 10 steps), and verl's own vLLM server on vLLM's CPU build (``+rollout_engine=vllm_cpu``, 2 steps; it starts
from dummy weights, so rollout log-probs that match the trainer's prove the weights reached it). The assertions
read what verl logged, the checkpoint it wrote and what it left in ``/dev/shm``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
from importlib.metadata import distributions

import pytest
import torch

from .main_job import run_main_job, shm_segments


def per_step(log: str) -> dict[int, dict[str, float]]:
    """verl's console metric lines of the training steps as {step: {key: value}} (parsed by the plugin's own log
    reader); step 0 is the validation before training."""
    from research_plugin.dynamics.training_logs import parse_console

    steps: dict[int, dict[str, float]] = {}
    for key, series in parse_console(log.splitlines()).items():
        for step, value in series.items():
            if step > 0:
                steps.setdefault(step, {})[key] = value
    return steps


@pytest.fixture(scope="module", params=["hf", "vllm_cpu"])
def run(request, tmp_path_factory):
    engine = request.param
    if engine == "hf":
        job = request.getfixturevalue("main_job_hf")
    elif importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM's CPU build is not installed (the vllm-cpu extra, x86-64 Linux)")
    else:
        job = run_main_job(tmp_path_factory.mktemp(f"cpu_grpo_{engine}"), engine)
    return {**job, "per_step": per_step(job["log"])}


def test_every_step_logs_reward_search_and_length_metrics(run):
    steps = run["per_step"]
    assert sorted(steps) == list(range(1, run["steps"] + 1)), run["log"][-3000:]
    for m in steps.values():
        for key in ("critic/score/mean", "search/f1/mean", "search/format/mean", "search/num_searches/mean",
                    "response_length/mean", "timing_s/step"):  # fmt: skip
            assert key in m and math.isfinite(m[key]), key
        assert m["timing_s/step"] > 0 and m["response_length/mean"] > 0
        assert 0 <= m["search/f1/mean"] <= 1 and 0 <= m["search/format/mean"] <= 1
    # the warmed-up policy searches: trajectories retrieved passages, and those tokens were in the batch
    assert any(m["search/num_searches/mean"] > 0 for m in steps.values())


def test_the_guard_watched_every_step_of_the_default_run_and_raised_no_alarm(run):
    from research_plugin.core.guard import RULE_NAMES

    for m in run["per_step"].values():
        assert {f"guard/{r}" for r in RULE_NAMES} | {"guard/alarms"} <= set(m)
        assert m["guard/alarms"] == 0, {k: v for k, v in m.items() if k.startswith("guard/")}
    assert "guard: no alarm (8 rules, action warn)" in run["log"]


def test_exactly_the_retrieved_tokens_have_mask_0(run):
    for m in run["per_step"].values():
        # response_mask as the trainer read it from TransferQueue vs the tokens the agent loop inserted
        assert m["search/masked_tokens/sum"] == m["search/retrieved_tokens/sum"]
    assert sum(m["search/retrieved_tokens/sum"] for m in run["per_step"].values()) > 0


def test_every_rollout_used_the_trainers_current_weights(run):
    for step, m in run["per_step"].items():
        # the rollout server reported the weight version it sampled with: the current one (staleness 0) ...
        assert m["training/off_policy/trajectory_staleness/max"] == 0
        # ... and its log-probs are the actor's: fp32 on both sides, so they agree to rounding error. At step 1
        # this shows the initial weights reached the server (vLLM starts from dummy weights), at step 2 the
        # weights trained in step 1.
        assert m["training/rollout_probs_diff_mean"] < 1e-4, (step, m["training/rollout_probs_diff_mean"])


def test_the_run_leaves_no_shared_memory_behind(run):
    # vLLM's processes are killed at the end of the job; the plugin's reaper unlinks their segments after them
    deadline = time.monotonic() + 30
    while (left := shm_segments() - run["shm_before"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left


def test_no_cuda_package_came_with_the_install():
    assert sorted(d.metadata["Name"] for d in distributions() if d.metadata["Name"].lower().startswith("nvidia-")) == []


def test_policy_weights_changed_and_a_checkpoint_was_written(run):
    from research_plugin.demo.assets import demo_model

    actor = run["ckpt"] / f"global_step_{run['steps']}" / "actor"
    shards = sorted(actor.glob("model_world_size_*_rank_0.pt"))
    assert shards, sorted(p.name for p in actor.iterdir())
    trained = torch.load(shards[0], map_location="cpu", weights_only=False)
    trained = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in trained.items()}
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(demo_model()).state_dict()
    common = [k for k in trained if k in initial]
    assert common, (list(trained)[:5], list(initial)[:5])
    changed = [k for k in common if not torch.equal(trained[k].float(), initial[k].float())]
    assert len(changed) > len(common) // 2, f"only {len(changed)}/{len(common)} tensors changed"


def test_the_run_ends_with_a_summary_metrics_plots_and_a_model_eval_and_demo_load(run):
    from research_plugin.checkpoints import latest_hf_checkpoint, resolve_model_dir

    log, steps = run["log"], run["steps"]
    assert f"=== tiny_cpu_grpo: {steps} training steps in" in log
    for line in ("validation", "reward", "answer F1", "searches / question", "checkpoint:", "plots:", "next:"):
        assert line in log, line
    assert "target_num_threads" not in log  # TransferQueue's per-transfer warning
    # the eval command it suggests names the run's retriever: the fact world's corpus (a bm25 spec)
    from research_plugin.demo.assets import fact_world

    assert f"--retriever {fact_world('corpus')} " in log
    # validated before training (step 0) and after the last step, both in the metrics file the plots read
    lines = [json.loads(line) for line in (run["ckpt"] / "metrics.jsonl").read_text().splitlines()]
    val_steps = [r["step"] for r in lines if any(k.startswith("val-core/") for k in r["data"])]
    assert val_steps == [0, steps] and [r["step"] for r in lines][1:] == list(range(1, steps + 1))
    assert {p.name for p in (run["ckpt"] / "plots").glob("*.png")} >= {"reward.png", "searches.png"}
    # the run's folder stands for its newest Hugging Face copy
    hf = latest_hf_checkpoint(run["ckpt"])
    assert hf == run["ckpt"] / f"global_step_{steps}" / "actor" / "huggingface"
    assert resolve_model_dir(run["ckpt"]) == hf and (hf / "tokenizer.json").is_file()
    demo = subprocess.run(
        [sys.executable, "-m", "research_plugin.cli", "demo", "-n", "1", "--model", str(run["ckpt"])],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert '"questions": 1' in demo.stdout
