"""Index builds: both corpus formats, both backends, manifests, resumable dense shards, atomic output, the CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from research_plugin.cli import main
from research_plugin.data import two_hop_corpus_path
from research_plugin.retrieval import BM25Retriever, Retriever, build_retriever, index_builder, iter_corpus
from research_plugin.retrieval.dense import DenseRetriever, Encoder
from research_plugin.retrieval.index_builder import build_index

from .corpora import MINI_CORPUS

QUESTION = "Who founded the Orvell Glassworks?"


@pytest.fixture(scope="module")
def title_text_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MINI_CORPUS as FlashRAG ``{"id", "title", "text"}`` rows, with a blank and a broken line to skip."""
    path = tmp_path_factory.mktemp("corpus") / "title_text.jsonl"
    rows = [json.dumps({"id": f"m{i}", "title": title, "text": text}) for i, (title, text) in enumerate(MINI_CORPUS)]
    path.write_text("\n".join(rows[:3] + ["", "{not json"] + rows[3:]) + "\n")
    return path


@pytest.fixture(params=["contents", "title_text"])
def corpus(request: pytest.FixtureRequest, mini_corpus: Path, title_text_corpus: Path) -> Path:
    return mini_corpus if request.param == "contents" else title_text_corpus


def top_ids(retriever: Retriever, queries: list[str], top_k: int = 1) -> list[list[str]]:
    return [[p.id for p in r.passages] for r in asyncio.run(retriever.search(queries, top_k))]


def check_common_manifest(manifest: dict, backend: str, corpus: Path) -> None:
    assert manifest["backend"] == backend
    assert re.fullmatch(r"[0-9a-f]{16}", manifest["index_id"])
    assert datetime.fromisoformat(manifest["created"]).tzinfo is not None
    stat = corpus.stat()
    assert manifest["corpus"] == {"path": str(corpus.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    assert re.fullmatch(r"[0-9a-f]{64}", manifest["corpus_sha256"])
    assert manifest["passages"] == len(MINI_CORPUS)
    assert {"python", "research_plugin", "numpy"} <= manifest["versions"].keys()


def test_bm25_build(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "bm25"
    manifest = build_index(corpus, out, backend="bm25", progress=False)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    check_common_manifest(manifest, "bm25", corpus)
    assert "bm25s" in manifest["versions"]
    loaded = build_retriever({"type": "bm25", "index_dir": str(out)})
    assert top_ids(loaded, [QUESTION]) == [["m0"]]
    # BM25Retriever's own reuse check accepts the folder (the build's extra manifest keys do not matter)
    assert BM25Retriever(corpus, index_dir=out).loaded_from_index


def test_dense_build(corpus: Path, tmp_path: Path, minilm: Encoder) -> None:
    out = tmp_path / "dense"
    manifest = build_index(corpus, out, backend="dense", encoder=minilm, shard_size=4, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    check_common_manifest(manifest, "dense", corpus)
    assert manifest["encoder"] == minilm.info() and manifest["encoder"]["name"] == "minilm"
    assert manifest["encoder"]["query_prefix"] == manifest["encoder"]["passage_prefix"] == ""
    assert (manifest["index_type"], manifest["factory"], manifest["fp16"]) == ("Flat", "Flat", False)
    assert (manifest["dimension"], manifest["metric"]) == (384, "inner_product")
    assert {"faiss", "sentence_transformers", "torch"} <= manifest["versions"].keys()
    assert not out.with_name("dense.work").exists()  # the shard cache goes once the index is in place
    retriever = DenseRetriever(out, encoder=minilm)
    assert top_ids(retriever, [QUESTION, "Which river flows into the Amber Sea?"]) == [["m0"], ["m4"]]
    assert [retriever.passages[i].title for i in range(len(MINI_CORPUS))] == [t for t, _ in MINI_CORPUS]


def test_both_formats_give_the_same_passages_but_distinct_ids(
    mini_corpus: Path, title_text_corpus: Path, tmp_path: Path
) -> None:
    a = build_index(mini_corpus, tmp_path / "a", progress=False)
    b = build_index(title_text_corpus, tmp_path / "b", progress=False)
    again = build_index(mini_corpus, tmp_path / "a", progress=False)  # replaces the older build
    assert (tmp_path / "a" / "passages.jsonl").read_text() == (tmp_path / "b" / "passages.jsonl").read_text()
    assert a["index_id"] != b["index_id"]
    assert again["index_id"] == a["index_id"]


class Interrupted(Exception):
    """Stands in for Ctrl-C / a crash in the middle of an encode."""


def counting_encoder(monkeypatch: pytest.MonkeyPatch, encoder: Encoder, fail_on_call: int | None = None) -> list:
    """Record the passage ids of each ``encode_passages`` call; raise :class:`Interrupted` once, on call
    ``fail_on_call``."""
    calls: list[list[str]] = []
    real = encoder.encode_passages

    def encode_passages(passages, *args, **kwargs):
        nonlocal fail_on_call
        calls.append([p.id for p in passages])
        if len(calls) == fail_on_call:
            fail_on_call = None
            raise Interrupted
        return real(passages, *args, **kwargs)

    monkeypatch.setattr(encoder, "encode_passages", encode_passages)
    return calls


def test_interrupted_dense_build_resumes_with_the_missing_shards(
    mini_corpus: Path, tmp_path: Path, minilm: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, work = tmp_path / "index", tmp_path / "index.work"
    calls = counting_encoder(monkeypatch, minilm, fail_on_call=2)
    with pytest.raises(Interrupted):
        build_index(mini_corpus, out, backend="dense", encoder=minilm, shard_size=2, progress=False)
    assert calls == [["m0", "m1"], ["m2", "m3"]]
    # nothing half-built is visible: no index folder, no temporary folder; only the finished shard is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.work"]
    assert sorted(p.name for p in work.iterdir()) == ["key.json", "shard-00000.npy"]

    calls.clear()
    resumed = build_index(mini_corpus, out, backend="dense", encoder=minilm, shard_size=2, progress=False)
    assert calls == [["m2", "m3"], ["m4", "m5"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]

    reference = build_index(mini_corpus, tmp_path / "reference", backend="dense", encoder=minilm, shard_size=2)
    assert resumed["index_id"] == reference["index_id"]
    vectors = [faiss.read_index(str(d / "index.faiss")).reconstruct_n(0, 6) for d in (out, tmp_path / "reference")]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    queries = [QUESTION, "Where was Ilsa Marrow born?", "What is the capital of Varenholt?"]
    assert top_ids(DenseRetriever(out, encoder=minilm), queries, 3) == top_ids(
        DenseRetriever(tmp_path / "reference", encoder=minilm), queries, 3
    )


def test_shards_of_other_settings_are_not_reused(
    mini_corpus: Path, tmp_path: Path, minilm: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "index"
    calls = counting_encoder(monkeypatch, minilm, fail_on_call=2)
    with pytest.raises(Interrupted):
        build_index(mini_corpus, out, backend="dense", encoder=minilm, shard_size=2, progress=False)
    calls.clear()
    build_index(mini_corpus, out, backend="dense", encoder=minilm, shard_size=3, progress=False)
    assert calls == [["m0", "m1", "m2"], ["m3", "m4", "m5"]]


def test_data_parallel_build_equals_one_device(
    mini_corpus: Path, tmp_path: Path, minilm: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two device processes (here both on the CPU, as two GPUs would be) encode and write alternate shards; the
    index is the one a single device builds."""
    one = build_index(mini_corpus, tmp_path / "one", backend="dense", encoder=minilm, shard_size=2, progress=False)
    pools: list[tuple[int, list[str]]] = []

    class SpyPool(index_builder.ProcessPoolExecutor):
        def __init__(self, workers: int, **kwargs: Any) -> None:
            super().__init__(workers, **kwargs)
            self.jobs: list[str] = []
            pools.append((workers, self.jobs))

        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            self.jobs.append(fn.__name__)
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(index_builder, "ProcessPoolExecutor", SpyPool)
    calls = counting_encoder(monkeypatch, minilm)
    two = build_index(
        mini_corpus,
        tmp_path / "two",
        backend="dense",
        encoder=minilm,
        shard_size=2,
        devices=["cpu", "cpu"],
        progress=False,
    )
    # the shards were encoded in a pool of two processes, never by this process's encoder
    assert pools == [(2, ["_encode_shard"] * 3)] and calls == []
    assert two["index_id"] == one["index_id"] and two["passages"] == one["passages"] == 6
    vectors = [faiss.read_index(str(tmp_path / d / "index.faiss")).reconstruct_n(0, 6) for d in ("one", "two")]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert (tmp_path / "one" / "passages.jsonl").read_bytes() == (tmp_path / "two" / "passages.jsonl").read_bytes()


def test_an_error_mid_build_cancels_the_queued_shards(
    mini_corpus: Path, tmp_path: Path, minilm: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The corpus fails after four one-passage shards are queued on two devices: the two being encoded finish, the
    two queued are never started, and the corpus's own error comes out."""
    started: list[str] = []
    both_started = threading.Event()

    def encode_shard(shard: list, path: Path, batch_size: int) -> int:
        started.append(path.name)
        if len(started) == 2:
            both_started.set()
        time.sleep(1.0)
        return len(shard)

    def failing_corpus(path: Path) -> Iterator[Any]:
        yield from itertools.islice(iter_corpus(path), 4)
        both_started.wait(timeout=30)  # a pool thread may start a moment after its shard was queued
        raise Interrupted("corpus read failed")

    def thread_pool(workers: int, *, mp_context: Any, initializer: Any, initargs: Any) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(workers, initializer=initializer, initargs=initargs)

    # device "processes" as threads of this process, so that the stand-ins below apply to them
    monkeypatch.setattr(index_builder, "ProcessPoolExecutor", thread_pool)
    monkeypatch.setattr(index_builder, "_start_worker", lambda info, devices: devices.get())
    monkeypatch.setattr(index_builder, "_encode_shard", encode_shard)
    monkeypatch.setattr(index_builder, "iter_corpus", failing_corpus)
    with pytest.raises(Interrupted, match="corpus read failed"):
        build_index(
            mini_corpus, tmp_path / "index", backend="dense", encoder=minilm, devices=["a", "b"], shard_size=1,
            progress=False,
        )  # fmt: skip
    assert sorted(started) == ["shard-00000.npy", "shard-00001.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.work"]


def test_a_folder_that_is_not_an_index_is_never_replaced(mini_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        build_index(mini_corpus, tmp_path / "notes", progress=False)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_cli_builds_the_two_hop_corpus_with_bm25(tmp_path: Path) -> None:
    out = tmp_path / "two-hop-bm25"
    command = [sys.executable, "-m", "research_plugin.cli", "index", "build", "--corpus", "two_hop", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    lines = sum(1 for line in two_hop_corpus_path().open() if line.strip())
    assert (manifest["backend"], manifest["passages"]) == ("bm25", lines)
    assert len(BM25Retriever(index_dir=out).passages) == lines


def test_cli_builds_a_dense_index(
    mini_corpus: Path, tmp_path: Path, minilm: Encoder, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hnsw"
    argv = ["index", "build", "--corpus", str(mini_corpus), "--backend", "dense", "--out", str(out)]
    argv += [
        "--index-type",
        "HNSW32",
        "--fp16",
        "--batch-size",
        "4",
        "--shard-size",
        "4",
        "--encoder-dtype",
        "bfloat16",
    ]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert (manifest["factory"], manifest["encoder"]["name"]) == ("HNSW32,SQfp16", "minilm")
    assert manifest["encoder"]["dtype"] == "bfloat16"
    assert top_ids(DenseRetriever(out, encoder=minilm), [QUESTION]) == [["m0"]]


def test_cli_reports_bad_options(mini_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["index", "build", "--corpus", str(mini_corpus), "--backend", "dense", "--out", str(tmp_path / "x")]
    assert main([*argv, "--index-type", "IVF4,PQ8", "--fp16"]) == 2
    assert "fp16" in capsys.readouterr().err
    assert main([*argv, "--encoder-dtype", "int8"]) == 2
    assert "encoder dtype" in capsys.readouterr().err
