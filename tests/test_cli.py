"""The console script as a user runs it: doctor, search, and the embedded-default demo job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys


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


def test_doctor_fails_when_plugins_are_disabled():
    out = cli("doctor", env={"VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert out.returncode == 1 and "MISSING" in out.stdout


def test_search_prints_the_result_block():
    out = cli("search", "founder", "of", "the", "Orvell", "Glassworks", "--top-k", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "<result>" and lines[-1] == "</result>"
    assert lines[1].startswith("Doc 1 (Title: Orvell Glassworks") and lines[2].startswith("Doc 2 ")


def test_demo_job_runs_through_verl(tmp_path, tiny_model_dir):
    # the default policy (the warmed-up tiny model) is what the main-job test trains; here any HF model will do
    out = cli("demo", "-n", "2", "--response-length", "48", "--model", str(tiny_model_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("=== [demo-q") == 2
    summary = json.loads(re.search(r"\n(\{\n.*\})\s*$", out.stdout, re.S).group(1))
    assert summary["questions"] == 2
    assert 0 < summary["response_tokens_mean"] <= 48
    assert {"reward_mean", "f1_mean", "format_rate", "searches_per_trajectory", "masked_share"} <= set(summary)
