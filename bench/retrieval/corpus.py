"""The synthetic corpus and its queries, and the indexes built from it (cached under ``--work-dir``)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import DENSE_ENCODER, FORMAT, QUERY_WORDS, REPO, VOCAB_SIZE, ZIPF_S

# corpus and queries


def _shown(path: Path) -> str:
    """A path as recorded in results: relative to the repository when inside it, so results carry no machine paths."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """``size`` distinct pronounceable pseudo-words of 2-4 consonant-vowel syllables, none an English stopword."""
    from bm25s.stopwords import STOPWORDS_EN

    onsets = list("bcdfghjklmnprstvz") + ["ch", "sh", "th", "br", "tr", "gl"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou"]
    syllables = [o + v for o in onsets for v in vowels]
    stop = set(STOPWORDS_EN)
    words: dict[str, None] = {}
    while len(words) < size:
        n = int(rng.integers(2, 5))
        word = "".join(syllables[i] for i in rng.integers(0, len(syllables), n))
        if word not in stop:
            words[word] = None
    return list(words)


def _paths(work_dir: Path, passages: int, seed: int) -> tuple[Path, Path]:
    tag = f"p{passages}-s{seed}-v{FORMAT}"
    return work_dir / f"corpus-{tag}.jsonl", work_dir / f"queries-{tag}.jsonl"


def _index_dir(work_dir: Path, backend: str, passages: int, seed: int, passage_tokens: int) -> Path:
    settings = f"-{DENSE_ENCODER}-t{passage_tokens}" if backend == "dense" else ""
    return work_dir / f"index-{backend}{settings}-p{passages}-s{seed}-v{FORMAT}"


def generate_corpus(corpus_path: Path, queries_path: Path, passages: int, seed: int) -> None:
    """Write ``passages`` rows ``{id, title, text}`` and one query per passage (in shuffled order), atomically."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, VOCAB_SIZE)
    ranks = np.arange(1, VOCAB_SIZE + 1, dtype=np.float64)
    probs = ranks**-ZIPF_S
    probs /= probs.sum()
    qrng = np.random.default_rng([seed, 1])
    order = qrng.permutation(passages)  # query i comes from passage order[i]
    query_of: dict[int, str] = {}
    corpus_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_corpus, tmp_queries = corpus_path.with_suffix(".tmp"), queries_path.with_suffix(".tmp")
    chunk = 5000
    with open(tmp_corpus, "w", encoding="utf-8") as out, tqdm(total=passages, desc="corpus", unit="psg") as bar:
        for lo in range(0, passages, chunk):
            hi = min(passages, lo + chunk)
            lengths = rng.integers(80, 121, hi - lo)
            words = rng.choice(VOCAB_SIZE, size=int(lengths.sum()), p=probs)
            title_words = rng.integers(1000, VOCAB_SIZE, (hi - lo, 3))
            title_lens = rng.integers(1, 4, hi - lo)
            pos = 0
            for k in range(hi - lo):
                ids = words[pos : pos + lengths[k]]
                pos += lengths[k]
                text = " ".join(vocab[i] for i in ids)
                title = " ".join(vocab[i].capitalize() for i in title_words[k, : title_lens[k]])
                out.write(json.dumps({"id": str(lo + k), "title": title, "text": text}) + "\n")
                # query: QUERY_WORDS distinct word types of this passage, picked uniformly among its types
                types = np.unique(ids)
                picked = qrng.choice(types, size=min(QUERY_WORDS, len(types)), replace=False)
                query_of[lo + k] = " ".join(vocab[i] for i in picked)
            bar.update(hi - lo)
    with open(tmp_queries, "w", encoding="utf-8") as out:
        for pid in order.tolist():
            out.write(json.dumps({"query": query_of[pid], "id": str(pid)}) + "\n")
    os.replace(tmp_queries, queries_path)
    os.replace(tmp_corpus, corpus_path)  # last: its presence means both are complete


def load_queries(path: Path) -> list[tuple[str, str]]:
    """(query, source passage id) pairs, with repeated query texts dropped (the cache and dedup must not help)."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            norm = " ".join(row["query"].lower().split())
            if norm not in seen:
                seen.add(norm)
                out.append((row["query"], row["id"]))
    return out


@contextlib.contextmanager
def _ticker(desc: str) -> Iterator[None]:
    """A tqdm line that shows elapsed time while an opaque step runs (the index build has no progress hook)."""
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", mininterval=0.5)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.5):
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def build_index(backend: str, corpus_path: Path, index_dir: Path, passage_tokens: int) -> dict[str, Any]:
    """Build ``backend``'s index of the corpus into ``index_dir`` with research_plugin's index builder, once: the
    builder moves a finished index into place atomically, so a folder with a manifest is complete and is reused.
    Dense passages are embedded up to ``passage_tokens`` word pieces (the one-time build dominates a run on a few
    cores; a query's cost, encoding it and scanning every vector, does not depend on it)."""
    from research_plugin.retrieval.index_builder import build_index as build

    start = time.perf_counter()
    manifest_path = index_dir / "manifest.json"
    cached = manifest_path.exists()
    if not cached:
        if backend == "dense":
            from research_plugin.retrieval.dense import Encoder

            encoder = Encoder(DENSE_ENCODER)
            encoder.model.max_seq_length = passage_tokens
            build(corpus_path, index_dir, backend="dense", encoder=encoder, index_type="Flat", shard_size=10_000)
        else:
            with _ticker("bm25 index"):  # bm25s's own steps show no progress here
                build(corpus_path, index_dir, backend="bm25")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("backend", "bm25") != backend:
        raise RuntimeError(f"{index_dir} holds a {manifest.get('backend')} index, not {backend}")
    gc.collect()
    info: dict[str, Any] = {
        "backend": backend,
        "passages": manifest["passages"],
        "loaded_from_cache": cached,
        "seconds": round(time.perf_counter() - start, 2),
        "index_dir": _shown(index_dir),
    }
    if backend == "dense":
        info.update(encoder=manifest["encoder"]["name"], factory=manifest["factory"], passage_tokens=passage_tokens)
    return info
