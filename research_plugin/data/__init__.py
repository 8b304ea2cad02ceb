"""Bundled data: a small encyclopedia-style corpus we wrote, and two-hop questions over it."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent


def two_hop_corpus_path() -> Path:
    """The bundled corpus, one ``{"id", "contents": "\\"Title\\"\\ntext"}`` object per line (wiki-18 format)."""
    return DATA_DIR / "two_hop_corpus.jsonl"


def two_hop_questions_path() -> Path:
    """Two-hop questions over the bundled corpus, FlashRAG format (``id, question, golden_answers, metadata``)."""
    return DATA_DIR / "two_hop_questions.jsonl"
