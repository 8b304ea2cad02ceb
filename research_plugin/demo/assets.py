"""Bundled assets a recipe can name without a preparation step, as OmegaConf resolvers.

- ``${research_plugin.demo_model:}``: the tiny Qwen2 policy with its local tokenizer, format-warmed-up
  (:mod:`research_plugin.demo.warmup`); built once, then cached.
- ``${research_plugin.demo_data:train}`` / ``${research_plugin.demo_data:val}``: the bundled two-hop questions
  as verl parquet (``research-plugin prepare``'s row format); every 5th question is held out for validation.

Built on first use under the cache dir (``RESEARCH_PLUGIN_CACHE``, default ``~/.cache/research_plugin``), keyed
by a hash of the bundled data, behind a file lock so concurrent processes build once; writes are atomic.
The resolvers are registered at plugin import, so verl's launcher resolves them in whichever process first
reads the config.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from ..data import demo_corpus_path, demo_questions_path

VERSION = "6"  # bump when the tiny model, the warm-up or the row format changes


def cache_dir() -> Path:
    return Path(os.environ.get("RESEARCH_PLUGIN_CACHE", Path.home() / ".cache" / "research_plugin"))


def _fingerprint() -> str:
    h = hashlib.sha256(VERSION.encode())
    for path in (demo_questions_path(), demo_corpus_path()):
        h.update(path.read_bytes())
    return h.hexdigest()[:10]


@contextlib.contextmanager
def _locked(name: str):
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def demo_model() -> str:
    """Path of the format-warmed-up tiny policy (built on first use)."""
    from .tiny_model import build_tiny_model
    from .warmup import warm_up

    out = cache_dir() / f"tiny-qwen2-search-{_fingerprint()}"
    if not (out / "config.json").exists():
        with _locked("demo_model"):
            warm_up(build_tiny_model(cache_dir() / f"tiny-qwen2-{_fingerprint()}"), out)
    return str(out)


def is_validation(row: int) -> bool:
    """Whether the bundled question on (non-blank) line ``row`` is held out for validation: every 5th one."""
    return row % 5 == 4


def demo_data(split: str = "train") -> str:
    """Path of the bundled questions as a verl parquet file for ``split`` (``train`` or ``val``)."""
    from ..prepare.formats import parse
    from ..prepare.rows import build_row, write_parquet

    if split not in ("train", "val"):
        raise ValueError(f"demo_data split must be 'train' or 'val', not {split!r}")
    out = cache_dir() / f"demo-data-{_fingerprint()}" / f"{split}.parquet"
    if out.exists():
        return str(out)
    with _locked("demo_data"):
        lines = [line for line in demo_questions_path().open(encoding="utf-8") if line.strip()]
        examples = [parse(json.loads(line), "flashrag") for line in lines]
        chosen = [ex for i, ex in enumerate(examples) if is_validation(i) == (split == "val")]
        rows = [
            build_row(
                ex, data_source="demo", index=i, split=split, dialect="research", scheme="research", template="instruct"
            )
            for i, ex in enumerate(chosen)
        ]
        write_parquet(rows, out)
    return str(out)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("research_plugin.demo_model", demo_model, replace=True)
    OmegaConf.register_new_resolver("research_plugin.demo_data", demo_data, replace=True)
