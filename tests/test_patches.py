"""The upstream patch series in ``patches/``: up to date with the plugin; it applies to verl 0.9.1 and its tests pass.

The second test copies the installed verl distribution (``verl/``, ``tests/``, ``scripts/`` as the wheel lays them
out, i.e. verl's repository layout) into a scratch git repository, applies the series with ``git apply --check``
then ``git am``, and in one fresh interpreter (``PYTHONPATH`` = the scratch tree, this plugin switched off with
``VERL_USE_EXTERNAL_PLUGINS=none``) imports every module the series adds and runs the ``*_on_cpu.py`` tests it adds.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATCHES = ROOT / "patches"
GENERATOR = PATCHES / "generate.py"
SERIES = sorted(PATCHES.glob("*.patch"))
IDENTITY = {
    "GIT_AUTHOR_NAME": "verl contributor",
    "GIT_AUTHOR_EMAIL": "contributor@example.com",
    "GIT_COMMITTER_NAME": "verl contributor",
    "GIT_COMMITTER_EMAIL": "contributor@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    )
    return out.stdout


OPTIONAL_IMPORT = re.compile(r"^import (bm25s|Stemmer)$", re.M)
"""A top-level import of a package verl does not install (BM25's)."""


def added_files() -> list[str]:
    """Paths the series creates, from the ``diff --git`` / ``new file mode`` lines of its patches."""
    paths = []
    for patch in SERIES:
        text = patch.read_text(encoding="utf-8")
        paths += re.findall(r"^diff --git a/\S+ b/(\S+)\nnew file mode", text, flags=re.M)
    return paths


def test_committed_patches_match_a_fresh_generation(tmp_path):
    """The CI drift check: ``patches/`` must be what the generator makes from the plugin's current modules."""
    assert SERIES, "no patches/*.patch: run python patches/generate.py"
    out = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, f"patches/generate.py failed:\n{out.stderr}"
    fresh = sorted(tmp_path.glob("*.patch"))
    hint = "patches/ is out of date with research_plugin: run `python patches/generate.py` and commit the result"
    assert [p.name for p in fresh] == [p.name for p in SERIES], hint
    for new, old in zip(fresh, SERIES):
        assert new.read_bytes() == old.read_bytes(), f"{hint} ({old.name} differs)"


def test_generation_is_deterministic(tmp_path):
    for name in ("a", "b"):
        run([sys.executable, str(GENERATOR), "--out", str(tmp_path / name)], ROOT)
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").glob("*.patch")}
    assert first and first == {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.patch")}


@pytest.fixture(scope="module")
def patched_verl(tmp_path_factory) -> Path:
    """A scratch git repo holding the installed verl 0.9.1 distribution with the series applied by ``git am``."""
    dist = importlib.metadata.distribution("verl")
    assert dist.version == "0.9.1"
    repo = tmp_path_factory.mktemp("verl")
    for f in dist.files or []:
        if f.parts[0].endswith(".dist-info") or "__pycache__" in f.parts or f.suffix == ".pyc":
            continue
        dest = repo / f
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dist.locate_file(f), dest)
    env = {**os.environ, **IDENTITY}
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-q", "-m", "verl 0.9.1"], repo, env)
    run(["git", "apply", "--check", *map(str, SERIES)], repo, env)
    run(["git", "am", "-q", *map(str, SERIES)], repo, env)
    assert run(["git", "status", "--porcelain"], repo, env) == ""
    return repo


def test_series_applies_as_one_commit_per_patch(patched_verl):
    log = run(["git", "log", "--format=%s"], patched_verl).splitlines()
    assert len(log) == len(SERIES) + 1 and log[-1] == "verl 0.9.1"
    assert all(f"{i:04d}-" in p.name for i, p in enumerate(SERIES, 1))
    assert (patched_verl / "verl/experimental/agent_loop/search_agent_loop.py").is_file()
    text = (patched_verl / "verl/utils/reward_score/search_agent/rewards.py").read_text()
    assert text.startswith("# Copyright") and "Licensed under the Apache License, Version 2.0" in text
    assert "research_plugin" not in text.split("\n", 1)[1]  # only the copyright line names the authors


def test_patched_modules_import_and_patched_tests_pass(patched_verl):
    added = added_files()
    sources = {p[:-3].replace("/", ".").removesuffix(".__init__"): p for p in added if p.startswith("verl/")}
    modules = sorted(m for m, p in sources.items() if p.endswith(".py"))
    tests = [p for p in added if p.startswith("tests/") and p.endswith("_on_cpu.py")]
    assert modules and len(tests) >= 3
    optional = [m for m in modules if OPTIONAL_IMPORT.search((patched_verl / sources[m]).read_text())]
    assert optional == ["verl.experimental.agent_loop.search.retrieval.bm25"]
    script = textwrap.dedent(
        """
        import importlib, sys
        from pathlib import Path

        root, tests = Path(sys.argv[1]).resolve(), sys.argv[4:]
        modules, optional = sys.argv[2].split(","), sys.argv[3].split(",")


        class NotInstalled:
            \"\"\"Makes BM25's optional packages unimportable, as in a plain verl install.\"\"\"

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("bm25s", "Stemmer"):
                    raise ImportError(f"{name} is not installed")


        sys.meta_path.insert(0, NotInstalled())
        for name in [m for m in modules if m not in optional]:  # without the optional packages
            path = Path(importlib.import_module(name).__file__).resolve()
            assert path.is_relative_to(root), f"{name} imported from {path}, not from the patched tree"
        from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

        assert "search_agent" in _agent_loop_registry, "the package import does not register search_agent"
        from verl.experimental.agent_loop.search.retrieval import build_retriever

        try:
            build_retriever({"type": "bm25", "corpus": "two_hop"})
            raise AssertionError("BM25 built without bm25s")
        except ImportError as e:
            assert "pip install bm25s PyStemmer" in str(e), e
        sys.meta_path.pop(0)
        for name in optional:
            assert Path(importlib.import_module(name).__file__).resolve().is_relative_to(root)

        import pytest

        code = pytest.main(["-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", *tests])
        assert "research_plugin" not in sys.modules, "the plugin was loaded: the patched tree was not tested alone"
        sys.exit(int(code))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(patched_verl), "VERL_USE_EXTERNAL_PLUGINS": "none"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(patched_verl), ",".join(modules), ",".join(optional), *tests],
        cwd=patched_verl,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"patched tests failed:\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
    assert re.search(r"\d+ passed", out.stdout) and "failed" not in out.stdout.splitlines()[-1]


def test_generated_code_is_clean_under_verls_lint_settings(patched_verl):
    """ruff with verl's settings (line length 120, verl first-party); ruff is a dev tool, absent in plain CI."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    files = [p for p in added_files() if p.endswith(".py")]
    settings = ["--isolated", "--line-length", "120", "--target-version", "py310"]
    rules = ["--config", "lint.isort.known-first-party = ['verl']", "--select", "E,F,W,I,B,UP", "--ignore", "B905,B027"]
    run([ruff, "check", *settings, *rules, *files], patched_verl)
    run([ruff, "format", "--check", *settings, *files], patched_verl)
