"""The search agent example's data: ``examples/search_agent/data`` of a verl source checkout.

A few hundred encyclopedia-style passages about a fictional world, and two-hop questions over them (written for the
example, so a model cannot know the answers without searching). The corpus backs the ``"two_hop"`` retriever spec
(in-process BM25) for smoke runs and tests. A pip-installed verl has no ``examples/``: name a corpus file instead,
``search_agent.retriever={type: bm25, corpus: /path/to/corpus.jsonl}``.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[4] / "examples" / "search_agent" / "data"


def _existing(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the search agent's example data ships with verl's source tree "
            "(examples/search_agent/data); name your own corpus with {type: bm25, corpus: PATH}"
        )
    return path


def two_hop_corpus_path() -> Path:
    """The example corpus, one ``{"id", "contents": "\\"Title\\"\\ntext"}`` object per line (wiki-18 format)."""
    return _existing("two_hop_corpus.jsonl")


def two_hop_questions_path() -> Path:
    """Two-hop questions over the example corpus, FlashRAG format (``id, question, golden_answers, metadata``)."""
    return _existing("two_hop_questions.jsonl")
