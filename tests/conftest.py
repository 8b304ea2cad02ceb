from __future__ import annotations

import os
from pathlib import Path

import pytest

from .corpora import MINI_CORPUS, write_corpus


@pytest.fixture(autouse=True)
def _verl_platform_per_test():
    """A test that runs verl's ``auto_set_device`` on a CPU recipe in this process selects the plugin's platform
    here, as the launcher does (``VERL_PLATFORM=cpu``); later tests' subprocesses must not inherit it."""
    before = os.environ.get("VERL_PLATFORM")
    yield
    if before is None:
        os.environ.pop("VERL_PLATFORM", None)
    else:
        os.environ["VERL_PLATFORM"] = before


@pytest.fixture(scope="session")
def mini_corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "mini.jsonl", MINI_CORPUS, id_format="m{}")


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory) -> Path:
    """``TOPICS`` as a jsonl corpus (ids ``doc0``...), written once per test module."""
    return write_corpus(tmp_path_factory.mktemp("topics") / "corpus.jsonl")


@pytest.fixture(scope="module")
def bm25(corpus_path: Path):
    """An in-process BM25 index of ``corpus_path``, one per test module."""
    from research_plugin.retrieval import BM25Retriever

    return BM25Retriever(corpus_path)


@pytest.fixture(scope="session")
def minilm():
    """The bundled offline all-MiniLM-L6-v2 encoder, loaded once per session."""
    from research_plugin.retrieval.dense import Encoder

    return Encoder("minilm", device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from research_plugin.demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="session")
def main_job_hf(tmp_path_factory) -> dict:
    """The main job with the ``hf`` rollout engine, run once for every test that checks it (``main_job``)."""
    from .main_job import run_main_job

    return run_main_job(tmp_path_factory.mktemp("main_job_hf"), "hf")
