"""The embedded default's policy ships in the package, built by the code as it is now; one command rebuilds it."""

from __future__ import annotations

import json
import subprocess
import sys

from research_plugin.demo import policy
from research_plugin.demo.warmup import HIDDEN, LAYERS


def test_the_shipped_policy_was_built_by_the_code_as_it_is():
    info = policy.build_info()
    # a change to the world, the tokenizer, the warm-up or their prompts without `research-plugin policy build`
    # fails here: the shipped bytes would no longer be what the code makes
    assert info["fingerprint"] == policy.code_fingerprint(), "rebuild it: research-plugin policy build"
    assert info["seed"] == policy.SEED and info["steps"] > 1000


def test_the_shipped_policy_loads_as_a_hugging_face_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = policy.shipped_policy()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == (HIDDEN, LAYERS)
    assert 0.3e6 < sum(p.numel() for p in model.parameters()) < 1e6
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_the_fingerprint_ignores_docstrings_and_comments_but_not_code(tmp_path):
    a, b, c = (tmp_path / f"{n}.py" for n in "abc")
    a.write_text('"""Module."""\nX = 1\n\n\ndef f():\n    """Doc."""\n    return X  # why\n')
    b.write_text('"""Reworded."""\nX = 1\n\n\ndef f():\n    return X\n')
    c.write_text('"""Module."""\nX = 2\n\n\ndef f():\n    """Doc."""\n    return X\n')
    assert policy._code(a) == policy._code(b) != policy._code(c)


def test_policy_build_and_info_commands(tmp_path):
    out = tmp_path / "policy"

    def cli(*args):
        cmd = [sys.executable, "-m", "research_plugin.cli", "policy", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    build = cli("build", "--dir", str(out), "--seed", "3", "--steps", "3")
    assert build.returncode == 0, build.stderr[-3000:]
    # not a terminal: one line every 5% instead of a bar redrawn per step
    assert "warm-up 3/3 steps, loss" in build.stdout and "\r" not in build.stdout + build.stderr
    info = json.loads((out / "build.json").read_text())
    assert (info["seed"], info["steps"], info["fingerprint"]) == (3, 3, policy.code_fingerprint())
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {p.name for p in out.iterdir()}
    shown = cli("info", "--dir", str(out))
    assert shown.returncode == 0 and json.loads(shown.stdout)["seed"] == 3
    (out / "build.json").write_text(json.dumps({**info, "fingerprint": "stale"}))
    assert cli("info", "--dir", str(out)).returncode == 1  # built by other code
