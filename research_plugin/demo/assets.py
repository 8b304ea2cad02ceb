"""Bundled assets a recipe can name without a preparation step, as OmegaConf resolvers.

- ``${research_plugin.demo_model:}``: the tiny Qwen2 policy (hidden 128, 2 layers) with its local tokenizer,
  warmed up on practice facts, shipped in the package (:mod:`research_plugin.demo.policy`).
- ``${research_plugin.fact_world:train}`` / ``:val`` / ``:corpus``: the generated fact world's questions as verl
  parquet (every 5th held out for validation) and its corpus (:mod:`research_plugin.demo.fact_world`): the main
  job's task.
- ``${research_plugin.two_hop:train}`` / ``${research_plugin.two_hop:val}``: the bundled two-hop questions
  as verl parquet (``research-plugin prepare``'s row format); every 5th question is held out for validation.

The data files are built on first use (a second) under the cache dir (``RESEARCH_PLUGIN_CACHE``, default
``~/.cache/research_plugin``), keyed by a hash of the bundled data and of the code that generates the world, behind
a file lock so concurrent processes build once; writes are atomic. The resolvers are registered at plugin import,
so verl's launcher resolves them in whichever process first reads the config.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from ..data import two_hop_corpus_path, two_hop_questions_path

VERSION = "8"  # bump when the row format changes


def cache_dir() -> Path:
    return Path(os.environ.get("RESEARCH_PLUGIN_CACHE", Path.home() / ".cache" / "research_plugin"))


def _fingerprint() -> str:
    h = hashlib.sha256(VERSION.encode())
    here = Path(__file__).parent  # the code that makes the world: a change rebuilds
    for path in (two_hop_questions_path(), two_hop_corpus_path(), here / "fact_world.py"):
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
    """Path of the warmed-up tiny policy shipped in the package."""
    from .policy import shipped_policy

    return str(shipped_policy())


def split_rows(rows: list, split: str) -> list:
    """The rows of ``split``: every 5th row is held out for validation (``val``), the rest are ``train``."""
    return [row for i, row in enumerate(rows) if (i % 5 == 4) == (split == "val")]


def two_hop(split: str = "train") -> str:
    """Path of the bundled questions as a verl parquet file for ``split`` (``train`` or ``val``)."""
    if split not in ("train", "val"):
        raise ValueError(f"two_hop split must be 'train' or 'val', not {split!r}")
    out = cache_dir() / f"two-hop-{_fingerprint()}" / f"{split}.parquet"
    if out.exists():
        return str(out)
    with _locked("two_hop"):
        if not out.exists():  # another process may have built it while this one waited
            lines = [line for line in two_hop_questions_path().open(encoding="utf-8") if line.strip()]
            _write_split([json.loads(line) for line in lines], "two_hop", split, out)
    return str(out)


def _write_split(questions: list[dict], data_source: str, split: str, out: Path) -> None:
    """FlashRAG-format ``questions`` of ``split`` (every 5th is ``val``) as verl parquet rows in ``out``."""
    from ..prepare.formats import parse
    from ..prepare.rows import build_row, write_parquet

    chosen = [parse(q, "flashrag") for q in split_rows(questions, split)]
    options = {"dialect": "research", "scheme": "research", "template": "instruct"}
    rows = [build_row(ex, data_source=data_source, index=i, split=split, **options) for i, ex in enumerate(chosen)]
    write_parquet(rows, out)


def fact_world(part: str = "train") -> str:
    """Path of the generated fact world's ``train`` / ``val`` questions (verl parquet; every 5th held out) or its
    ``corpus`` (wiki-18 jsonl, for a bm25 retriever spec)."""
    from .fact_world import bundled_world, corpus_rows, question_rows

    if part not in ("train", "val", "corpus"):
        raise ValueError(f"fact_world part must be 'train', 'val' or 'corpus', not {part!r}")
    folder = cache_dir() / f"fact-world-{_fingerprint()}"
    out = folder / ("corpus.jsonl" if part == "corpus" else f"{part}.parquet")
    if out.exists():
        return str(out)
    with _locked("fact_world"):
        if out.exists():  # another process built it while this one waited
            return str(out)
        facts = bundled_world()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "corpus.jsonl.tmp"
        tmp.write_text("".join(json.dumps(row) + "\n" for row in corpus_rows(facts)), encoding="utf-8")
        os.replace(tmp, folder / "corpus.jsonl")
        for split in ("train", "val"):
            _write_split(question_rows(facts), "fact_world", split, folder / f"{split}.parquet")
    return str(out)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("research_plugin.demo_model", demo_model, replace=True)
    OmegaConf.register_new_resolver("research_plugin.two_hop", two_hop, replace=True)
    OmegaConf.register_new_resolver("research_plugin.fact_world", fact_world, replace=True)
