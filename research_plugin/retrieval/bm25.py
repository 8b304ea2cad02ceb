"""In-process BM25 retrieval with bm25s (numpy backend), optionally persisted to and mmap-loaded from a folder.

bm25s picks JAX for its top-k when JAX is importable, and runs a JAX op the moment it is imported: on a machine
with a GPU build of JAX that claims about 75% of the GPU's memory for the life of the process (XLA preallocates).
Here bm25s is imported with JAX hidden and always searches with its numpy top-k, so it never initialises JAX; a
JAX the user imported keeps its module and its settings (see :func:`import_bm25s`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import Stemmer

from .base import Passage, Retriever, SearchResult, iter_corpus

logger = logging.getLogger(__name__)


def import_bm25s() -> ModuleType:
    """``bm25s``, imported so that it cannot see JAX (its JAX top-k stays off; see the module docstring).

    While bm25s is imported, ``jax`` is hidden from the import system (``sys.modules["jax"] = None`` makes its
    ``import jax.lax`` fail as if JAX were not installed); afterwards ``sys.modules`` is as it was, so a JAX the
    user imported before, or imports later, is untouched.
    """
    if "bm25s" in sys.modules:
        return sys.modules["bm25s"]
    hidden = ("jax", "jax.lax")
    saved = {name: sys.modules[name] for name in hidden if name in sys.modules}
    sys.modules.update(dict.fromkeys(hidden))
    try:
        import bm25s
    finally:
        for name in hidden:
            if name in saved:
                sys.modules[name] = saved[name]
            else:
                sys.modules.pop(name, None)
    return bm25s


bm25s = import_bm25s()

_MANIFEST = "manifest.json"
_PASSAGES = "passages.jsonl"
_FORMAT_VERSION = 1


class BM25Retriever(Retriever):
    """BM25 over a jsonl corpus path, the bundled two-hop corpus (``"two_hop"``) or a list of passages.

    The index is built once at construction. With ``index_dir``, the index and passages are saved there, and a
    later construction over the same, unchanged corpus with the same settings memory-maps them instead of
    rebuilding (``loaded_from_index`` tells which happened). With ``index_dir`` and no ``corpus``, the saved index
    is loaded as it is, with its own settings (see :meth:`load`). Passages with a zero score are not returned.
    """

    name = "bm25"
    passages: list[Passage]
    _bm25: bm25s.BM25

    def __init__(
        self,
        corpus: str | Path | list[Passage] | None = None,
        *,
        stemmer: str | None = "english",
        stopwords: str | list[str] | None = "en",
        index_dir: str | Path | None = None,
    ) -> None:
        if corpus is None:
            if index_dir is None:
                raise ValueError("BM25Retriever needs a corpus or an index_dir")
            self._load_saved(Path(index_dir))
            return
        if corpus == "two_hop":
            from research_plugin.data import two_hop_corpus_path

            corpus = two_hop_corpus_path()
        self._configure("<in-memory>" if isinstance(corpus, list) else str(corpus), stemmer, stopwords)

        index_path = Path(index_dir) if index_dir is not None else None
        manifest = self._manifest(corpus, stemmer) if index_path is not None else {}
        if index_path is not None and self._load(index_path, manifest):
            self.loaded_from_index = True
            logger.info("bm25: loaded index of %d passages from %s", len(self.passages), index_path)
            return
        self.passages = list(corpus) if isinstance(corpus, list) else list(iter_corpus(corpus))
        if not self.passages:
            raise ValueError("BM25Retriever needs at least one passage")
        tokens = bm25s.tokenize(
            [f"{p.title}\n{p.text}" for p in self.passages],
            stopwords=stopwords,
            stemmer=self._stemmer,
            show_progress=False,
        )
        self._bm25 = bm25s.BM25(backend="numpy")
        self._bm25.index(tokens, show_progress=False)
        logger.info("bm25: indexed %d passages from %s", len(self.passages), self._source)
        if index_path is not None:
            self._save(index_path, {**manifest, "passages": len(self.passages)})

    def _load_saved(self, index_path: Path) -> None:
        manifest = json.loads((index_path / _MANIFEST).read_text())
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != _FORMAT_VERSION
            or manifest.get("backend", "bm25") != "bm25"
        ):
            raise ValueError(f"{index_path / _MANIFEST} is not a BM25 index manifest of format {_FORMAT_VERSION}")
        manifest.pop("passages", None)
        self._configure(str(index_path), manifest.get("stemmer"), manifest.get("stopwords"))
        if not self._load(index_path, manifest):
            raise ValueError(f"{index_path} does not hold a complete BM25 index")
        self.loaded_from_index = True
        logger.info("bm25: loaded index of %d passages from %s", len(self.passages), index_path)

    def _configure(self, source: str, stemmer: str | None, stopwords: str | list[str] | None) -> None:
        self._source = source
        self._stemmer = Stemmer.Stemmer(stemmer) if stemmer else None
        self._stopwords = stopwords
        self._lock = threading.Lock()
        self.loaded_from_index = False

    def describe(self) -> str:
        return f"bm25(corpus={self._source}, passages={len(self.passages)})"

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        return await asyncio.to_thread(self._search_sync, queries, top_k)

    def _search_sync(self, queries: list[str], top_k: int) -> list[SearchResult]:
        results = [SearchResult([]) for _ in queries]
        k = min(top_k, len(self.passages))
        with self._lock:
            tokenized = bm25s.tokenize(
                queries, stopwords=self._stopwords, stemmer=self._stemmer, return_ids=False, show_progress=False
            )
            vocab = self._bm25.vocab_dict
            known = [[t for t in tokens if t in vocab] for tokens in tokenized]
            todo = [i for i, tokens in enumerate(known) if tokens]
            if not todo:
                return results
            ids, scores = self._bm25.retrieve(
                [known[i] for i in todo], k=k, show_progress=False, backend_selection="numpy"
            )
        for i, row_ids, row_scores in zip(todo, ids.tolist(), scores.tolist(), strict=True):
            results[i].passages = [
                replace(self.passages[j], score=score)
                for j, score in zip(row_ids, row_scores, strict=True)
                if score > 0
            ]
        return results

    def _manifest(self, corpus: Path | str | list[Passage], stemmer: str | None) -> dict[str, Any]:
        """What a saved index depends on (JSON-normalised); it is reused only when this matches exactly."""
        if isinstance(corpus, list):
            digest = hashlib.sha256()
            for p in corpus:
                digest.update(json.dumps([p.id, p.title, p.text]).encode())
            source: dict[str, Any] = {"sha256": digest.hexdigest()}
        else:
            stat = os.stat(corpus)
            source = {"path": str(Path(corpus).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        manifest = {
            "format": _FORMAT_VERSION,
            "bm25s": bm25s.__version__,
            "corpus": source,
            "stemmer": stemmer,
            "stopwords": self._stopwords,
        }
        normalised: dict[str, Any] = json.loads(json.dumps(manifest))
        return normalised

    def _load(self, index_dir: Path, manifest: dict[str, Any]) -> bool:
        """Memory-map a saved index if its manifest matches and it is complete; False means build instead."""
        if not (index_dir / _MANIFEST).exists():
            return False
        try:
            saved = json.loads((index_dir / _MANIFEST).read_text())
            count = saved.pop("passages")
            if any(saved.get(key) != value for key, value in manifest.items()):
                return False  # other saved keys (an index build's id, dates, versions) do not matter
            with open(index_dir / _PASSAGES, encoding="utf-8") as f:
                passages = [Passage(**json.loads(line)) for line in f if line.strip()]
            bm25 = bm25s.BM25.load(index_dir, mmap=True, show_progress=False)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            logger.info("bm25: not using saved index in %s (%s: %s)", index_dir, type(e).__name__, e)
            return False
        if not (count == len(passages) == bm25.scores["num_docs"]):
            logger.warning("bm25: saved index in %s is inconsistent; rebuilding", index_dir)
            return False
        self.passages, self._bm25 = passages, bm25
        return True

    def _save(self, index_dir: Path, manifest: dict[str, Any]) -> None:
        """Write into a temporary sibling folder, then move it into place, so readers never see a partial index."""
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.", dir=index_dir.parent))
        try:
            self._bm25.save(tmp, show_progress=False)
            with open(tmp / _PASSAGES, "w", encoding="utf-8") as f:
                for p in self.passages:
                    f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n")
            (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
            if index_dir.exists():
                shutil.rmtree(index_dir)  # stale: its manifest did not match
            os.rename(tmp, index_dir)
            logger.info("bm25: saved index to %s", index_dir)
        except OSError as e:  # e.g. another process moved its copy in first
            logger.warning("bm25: could not save index to %s: %s", index_dir, e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
