"""Dense retrieval with the real bundled MiniLM: recall on a small labelled set, index kinds, prefixes, specs."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import types
from pathlib import Path

import faiss
import numpy as np
import pytest

from research_plugin.retrieval import Passage, SearchResult, build_retriever
from research_plugin.retrieval.dense import (
    BGE_QUERY_INSTRUCTION,
    BLAS_THRESHOLD,
    DenseRetriever,
    Encoder,
    bundled_minilm_path,
    default_prefixes,
    factory_string,
)
from research_plugin.retrieval.index_builder import build_index

from .corpora import TOPICS, to_passages, write_corpus
from .local_http import post, serve

# TOPICS (p00-p25) and four more entries (p26-p29)
PASSAGES = [
    *TOPICS,
    (
        "Printing press",
        "Gutenberg's movable type press, built around 1440 in Mainz, made books far cheaper to produce.",
    ),
    ("Penicillin", "Alexander Fleming discovered penicillin in 1928 when a mould killed bacteria in a culture dish."),
    (
        "Great Wall",
        "The Great Wall of China is a line of fortifications built over centuries against northern raiders.",
    ),
    ("Kangaroo", "Kangaroos are large Australian marsupials that hop on strong hind legs and carry young in a pouch."),
]

PASSAGE_OBJECTS = to_passages(PASSAGES, id_format="p{:02d}")

# Paraphrased questions and the index of the passage that answers each.
QUERIES = [
    ("Which mountain spits out melted stone and smoke?", 0),
    ("What insects make a sweet syrup from flower juice?", 1),
    ("What enormous frozen mass creeps down a valley?", 3),
    ("How do green plants make sugar out of light?", 5),
    ("What tall building by the sea warns sailors in the dark?", 6),
    ("Spinning funnel of wind dropping out of a storm", 8),
    ("Birds that cannot fly and live near Antarctica", 9),
    ("Which world is circled by bands of ice and dust?", 10),
    ("Strong little coffee made under high pressure", 12),
    ("A shot that teaches your body to fight a germ", 15),
    ("Instrument for seeing faraway planets up close", 17),
    ("Why does the ground suddenly tremble?", 19),
    ("Who made it cheap to print books with reusable letters?", 26),
    ("Which antibiotic came from a fungus?", 27),
    ("Animal from down under that jumps and keeps its baby in a pocket", 29),
]


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("dense") / "labelled.jsonl", PASSAGES, id_format="p{:02d}")


@pytest.fixture(scope="module")
def build(labelled_corpus: Path, minilm: Encoder, tmp_path_factory: pytest.TempPathFactory):
    """Index folders of the labelled corpus, one per (index_type, fp16), built on first use."""
    built: dict[tuple[str, bool], Path] = {}

    def get(index_type: str = "Flat", fp16: bool = False) -> Path:
        if (index_type, fp16) not in built:
            out = tmp_path_factory.mktemp("dense-index") / "index"
            build_index(labelled_corpus, out, backend="dense", encoder=minilm, index_type=index_type, fp16=fp16)
            built[index_type, fp16] = out
        return built[index_type, fp16]

    return get


def search(retriever: DenseRetriever, queries: list[str], top_k: int) -> list[list[str]]:
    results = asyncio.run(retriever.search(queries, top_k))
    return [[p.id for p in result.passages] for result in results]


def test_bundled_minilm_is_a_local_sentence_transformers_folder() -> None:
    path = bundled_minilm_path()
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("intfloat/e5-base-v2", ("query: ", "passage: ")),
        ("/models/multilingual-e5-large", ("query: ", "passage: ")),
        ("BAAI/bge-base-en-v1.5", (BGE_QUERY_INSTRUCTION, "")),
        ("BAAI/bge-m3", ("", "")),
        ("minilm", ("", "")),
        ("/models/sentence-e50", ("", "")),
    ],
)
def test_default_prefixes(name: str, expected: tuple[str, str]) -> None:
    assert default_prefixes(name) == expected


def test_encoder_applies_prefixes(minilm: Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = minilm.model.preprocess

    def preprocess(texts: list[str], **kwargs: object) -> dict:
        seen.extend(texts)
        return real(texts, **kwargs)

    monkeypatch.setattr(minilm.model, "preprocess", preprocess)
    encoder = copy.copy(minilm)
    encoder.query_prefix, encoder.passage_prefix = "query: ", "passage: "
    encoder.encode_queries(["who?"])
    out = encoder.encode_passages(PASSAGE_OBJECTS[:3], batch_size=2)
    assert seen[0] == "query: who?"
    assert sorted(seen[1:]) == sorted(f"passage: {p.contents}" for p in PASSAGE_OBJECTS[:3])
    assert out.shape == (3, 384) and out.dtype == np.float32


def test_pipelined_passage_encoding_equals_plain_encode(minilm: Encoder) -> None:
    """Length-ordered batches and tokenising ahead change nothing but speed: the same vectors, in the passages'
    order, as sentence-transformers' own ``encode`` over the same texts (lengths from 1 to ~120 words)."""
    passages = [
        Passage(f"p{i}", f"Title {i}", " ".join(["word", "river", "amber"][i % 3] for _ in range(1 + 7 * i)))
        for i in range(18)
    ]
    passages += PASSAGE_OBJECTS
    plain = minilm.model.encode([p.contents for p in passages], batch_size=4, normalize_embeddings=True)
    for batch_size in (1, 4, 64):
        np.testing.assert_allclose(minilm.encode_passages(passages, batch_size), plain, atol=2e-5)
    assert minilm.encode_passages([], 4).shape == (0, 384)


@pytest.mark.parametrize(
    ("index_type", "fp16", "factory"),
    [
        ("Flat", False, "Flat"),
        ("Flat", True, "SQfp16"),
        ("HNSW32", True, "HNSW32,SQfp16"),
        ("IVF1024,Flat", True, "IVF1024,SQfp16"),
        ("IVF1024,PQ48", False, "IVF1024,PQ48"),
    ],
)
def test_factory_string(index_type: str, fp16: bool, factory: str) -> None:
    assert factory_string(index_type, fp16) == factory


def test_fp16_does_not_apply_to_pq() -> None:
    with pytest.raises(ValueError, match="fp16"):
        factory_string("IVF1024,PQ48", True)


def test_recall_at_3_on_paraphrased_questions(build, minilm: Encoder) -> None:
    retriever = DenseRetriever(build("Flat"), encoder=minilm)
    found = search(retriever, [q for q, _ in QUERIES], 3)
    hits = [f"p{gold:02d}" in ids for (_, gold), ids in zip(QUERIES, found)]
    recall = sum(hits) / len(hits)
    print(f"MiniLM recall@3 on {len(QUERIES)} paraphrased questions over {len(PASSAGES)} passages: {recall:.2f}")
    assert recall >= 0.8


@pytest.mark.parametrize(
    ("index_type", "fp16", "options"), [("HNSW32", False, {}), ("Flat", True, {}), ("IVF2,Flat", False, {"nprobe": 2})]
)
def test_other_index_kinds_agree_with_flat_on_top_1(build, minilm: Encoder, index_type, fp16, options) -> None:
    queries = [q for q, _ in QUERIES]
    flat = search(DenseRetriever(build("Flat"), encoder=minilm), queries, 1)
    other = DenseRetriever(build(index_type, fp16), encoder=minilm, **options)
    assert other.manifest["factory"] == factory_string(index_type, fp16)
    assert search(other, queries, 1) == flat


def test_search_contract(build, minilm: Encoder) -> None:
    retriever = DenseRetriever(build("Flat"), encoder=minilm)
    results = asyncio.run(retriever.search(["coffee", "planet with rings", "coffee"], 100))
    assert [len(r.passages) for r in results] == [len(PASSAGES)] * 3  # top_k is capped at the corpus size
    for result in results:
        scores = [p.score for p in result.passages]
        assert scores == sorted(scores, reverse=True) and -1.01 <= scores[-1] <= scores[0] <= 1.01
        assert result.error is None
    assert results[0] == results[2]
    top = results[1].passages[0]
    assert (top.id, top.title, top.text) == ("p10", "Saturn", PASSAGES[10][1])
    assert "passages=30" in retriever.describe()


@pytest.mark.parametrize("clone_fails", [False, True])
def test_gpu_code_path_with_a_stand_in_faiss_gpu(
    build, minilm: Encoder, monkeypatch: pytest.MonkeyPatch, clone_fails: bool
) -> None:
    sharded: list[bool] = []

    def index_cpu_to_all_gpus(index, co):
        sharded.append(co.shard)
        if clone_fails:
            raise RuntimeError("not implemented for this type of index")
        return faiss.clone_index(index)  # a new index object, as faiss's GPU copy is

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    monkeypatch.setattr(faiss, "GpuMultipleClonerOptions", types.SimpleNamespace, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", index_cpu_to_all_gpus)
    retriever = DenseRetriever(build("Flat"), encoder=minilm, shard=True)
    on_cpu = DenseRetriever(build("Flat"), encoder=minilm, gpu=False)
    assert sharded == [True]
    assert retriever._index_on_gpus is not clone_fails and on_cpu._index_on_gpus is False
    assert search(retriever, ["Which antibiotic came from a fungus?"], 1) == [["p27"]]


def test_one_device_never_encodes_and_scans_at_once(build, minilm: Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """With encoder and index on the CPU, concurrent searches (agent loops sharing one retriever) take both stages
    one batch at a time: a torch encoding and a faiss scan never compete for the cores."""
    retriever = DenseRetriever(build("Flat"), encoder=minilm)
    assert retriever.parallel_batches == 1
    queries = [q for q, _ in QUERIES[:6]]
    expected = search(retriever, queries, 1)
    busy, most = [0], [0]

    def stage(run):
        def timed(*args, **kwargs):
            busy[0] += 1
            most[0] = max(most[0], busy[0])
            time.sleep(0.02)  # long enough for another thread to come in, were it let
            try:
                return run(*args, **kwargs)
            finally:
                busy[0] -= 1

        return timed

    monkeypatch.setattr(minilm, "encode_queries", stage(minilm.encode_queries))
    retriever.index = types.SimpleNamespace(search=stage(retriever.index.search))

    async def go() -> list[list[SearchResult]]:
        return await asyncio.gather(*(retriever.search([q], 1) for q in queries))

    found = asyncio.run(go())
    assert most[0] == 1
    assert [[p.id for p in r.passages] for (r,) in found] == expected


def test_spec_loads_the_encoder_named_in_the_manifest(build) -> None:
    retriever = build_retriever({"type": "dense", "index_dir": str(build("Flat"))})
    assert isinstance(retriever, DenseRetriever)
    assert retriever.encoder.name == "minilm"
    assert search(retriever, ["Which antibiotic came from a fungus?"], 1) == [["p27"]]


def test_encoder_with_other_prefixes_is_refused(build, minilm: Encoder) -> None:
    e5_style = copy.copy(minilm)
    e5_style.query_prefix = "query: "
    with pytest.raises(ValueError, match="prefixes"):
        DenseRetriever(build("Flat"), encoder=e5_style)


def test_non_dense_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"backend": "bm25", "format": 1}))
    with pytest.raises(ValueError, match="no dense index"):
        DenseRetriever(tmp_path)


def test_bfloat16_query_encoder_keeps_the_answers(build) -> None:
    """bfloat16 weights (the fast choice on CPUs with AVX512-BF16) rank the labelled set as float32 does."""
    queries = [q for q, _ in QUERIES]
    full = DenseRetriever(build("Flat"))
    half = DenseRetriever(build("Flat"), encoder_dtype="bfloat16")
    assert half.encoder.info()["dtype"] == "bfloat16"
    assert str(next(half.encoder.model.parameters()).dtype) == "torch.bfloat16"
    embeddings = half.encoder.encode_queries(queries)
    assert embeddings.dtype == np.float32
    assert np.abs(embeddings - full.encoder.encode_queries(queries)).max() < 0.05
    assert search(half, queries, 1) == search(full, queries, 1)
    with pytest.raises(ValueError, match="encoder dtype"):
        Encoder("minilm", dtype="int8")


def test_batches_take_the_blas_path_with_the_same_answers(build, minilm: Encoder) -> None:
    """A batch of >= BLAS_THRESHOLD queries is one matrix product in faiss; its answers equal one-by-one search."""
    queries = [q for q, _ in QUERIES] * 2  # 32 queries: above our threshold, below faiss 1.15's own 128000
    original = faiss.cvar.distance_compute_blas_threshold
    try:
        retriever = DenseRetriever(build("Flat"), encoder=minilm)
        assert faiss.cvar.distance_compute_blas_threshold == BLAS_THRESHOLD < len(queries)
        batched = asyncio.run(retriever.search(queries, 5))
        alone = [asyncio.run(retriever.search([q], 5))[0] for q in queries[:16]]
        for one, many in zip(alone, batched):
            assert [p.id for p in one.passages] == [p.id for p in many.passages]
            assert [p.score for p in one.passages] == pytest.approx([p.score for p in many.passages], abs=1e-5)
        DenseRetriever(build("Flat"), encoder=minilm, blas_threshold=None)  # leaves faiss's setting alone
        assert faiss.cvar.distance_compute_blas_threshold == BLAS_THRESHOLD
    finally:
        faiss.cvar.distance_compute_blas_threshold = original


def test_cli_serve_passes_dense_options(build, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    import research_plugin.retrieval as retrieval
    from research_plugin.cli import main

    specs: list[dict] = []
    real_build = retrieval.build_retriever
    monkeypatch.setattr(retrieval, "build_retriever", lambda spec: specs.append(spec) or real_build(spec))
    apps: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    argv = ["serve", "--index", str(build("Flat")), "--encoder-dtype", "bfloat16", "--cpu-index", "--nprobe", "4"]
    assert main(argv) == 0
    assert main(["serve", "--index", "two_hop", "--encoder-dtype", "bfloat16"]) == 2  # not a dense index
    assert len(apps) == 1
    with serve(apps[0]) as base:
        status, _, body = post(base + "/search", {"query": "Which antibiotic came from a fungus?", "top_n": 1})
    assert status == 200 and body[0]["id"] == "p27"
    (spec,) = specs
    assert {k: spec[k] for k in ("encoder_dtype", "gpu", "nprobe")} == {
        "encoder_dtype": "bfloat16",
        "gpu": False,
        "nprobe": 4,
    }
