"""The embedded default's policy, shipped in the package: a tiny Qwen2 (hidden 128, 2 layers, 0.6M parameters) with
its locally trained tokenizer, warmed up on practice facts (:mod:`.warmup`).

The weights are bytes in the package (``research_plugin/data/tiny_policy/``), so every machine starts RL from the
same policy and nothing trains on first use: 3,600 fp32 warm-up steps end in a different place on another
processor (its own vector kernels), and what RL then shows would depend on the machine. ``research-plugin policy
build`` rebuilds it from the code (``--seed`` for another warm-up, ``--dir`` for another folder); the folder's
``build.json`` records the settings, the machine, and :func:`code_fingerprint` of the code that built it, and a
test fails when that code changes without a rebuild.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "tiny_policy"
SEED = 0
"""The warm-up seed of the shipped policy."""
BUILD_FILE = "build.json"


def shipped_policy() -> Path:
    """The folder of the shipped policy (a Hugging Face model folder)."""
    if not (SHIPPED / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded default's policy is missing from {SHIPPED} (a checkout without its data files?); "
            "rebuild it with `research-plugin policy build`"
        )
    return SHIPPED


def _code(path: Path) -> str:
    """A module's code without docstrings and comments (rewording either needs no rebuild), as ``ast.unparse``
    writes it (the same text on every Python since 3.9, unlike ``ast.dump``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def code_fingerprint() -> str:
    """A hash of what the build depends on: the code of the world, the tokenizer and the warm-up, the tokenizer's
    training text (the bundled data, every dialect's prompts and tags), and the text of sample warm-up
    trajectories (chat template, system prompt, result block)."""
    from ..core.dialects import get_dialect
    from .fact_world import PracticeWorld
    from .tiny_model import CHAT_TEMPLATE, _training_text
    from .warmup import practice_texts

    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in ("fact_world.py", "tiny_model.py", "warmup.py"):
        h.update(_code(here / name).encode())
    for text in _training_text():
        h.update(text.encode())
    h.update(CHAT_TEMPLATE.encode())
    world = PracticeWorld(SEED)
    for i in range(8):
        h.update(json.dumps(practice_texts(world, get_dialect("research"), system_prompt=i % 2 == 0)).encode())
    return h.hexdigest()[:16]


def build_info(path: str | os.PathLike = SHIPPED) -> dict:
    """``build.json`` of a policy folder ({} when it has none)."""
    f = Path(path) / BUILD_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def machine_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _progress(total: int):
    """A progress callback: a tqdm bar on a terminal, else a line every 5% (a log stays readable)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc="warm-up on practice facts", unit="step")

        def update(step: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}")
            if step >= total:
                bar.close()

        return update
    start, every = time.monotonic(), max(1, total // 20)

    def line(step: int, loss: float) -> None:
        if step % every < 10 or step >= total:
            print(f"warm-up {step}/{total} steps, loss {loss:.3f}, {time.monotonic() - start:.0f} s", flush=True)

    return line


def build_policy(out_dir: str | os.PathLike = SHIPPED, *, seed: int = SEED, steps: int | None = None) -> Path:
    """Build the policy from the code into ``out_dir`` (replaced atomically): the tiny model and its tokenizer
    (:mod:`.tiny_model`), then the warm-up (:mod:`.warmup`); ``steps`` shortens the warm-up (tests)."""
    import torch
    from transformers.utils import logging as hf_logging

    from .warmup import HIDDEN, LAYERS, WARMUP_STEPS, warmed_up_policy

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    steps = WARMUP_STEPS if steps is None else steps
    hf_logging.disable_progress_bar()  # loading and saving a 2 MB model: only the warm-up's progress shows
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".policy-build-", dir=out.parent) as tmp:
        model, tokenizer, stats = warmed_up_policy(tmp, seed=seed, steps=steps, progress=_progress(steps))
        staged = Path(tmp) / "policy"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        info = {
            "fingerprint": code_fingerprint(),
            "seed": seed,
            "steps": steps,
            "hidden_size": HIDDEN,
            "layers": LAYERS,
            **stats,
            "build_s": round(time.monotonic() - start, 1),
            "machine": {"cpu": machine_cpu(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        }
        (staged / BUILD_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        old = Path(tmp) / "old"
        if out.exists():
            os.replace(out, old)
        os.replace(staged, out)
    return out


def is_current(path: str | os.PathLike = SHIPPED) -> bool:
    """Whether the policy in ``path`` was built by the code as it is now."""
    return build_info(path).get("fingerprint") == code_fingerprint()
