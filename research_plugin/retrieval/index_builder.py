"""Build a retrieval index folder from a jsonl corpus (wiki-18 ``{"id", "contents"}`` or ``{"id", "title", "text"}``).

The folder loads with ``build_retriever({"type": backend, "index_dir": out})``. It is built in a sibling
``<out>.tmp-*`` folder and renamed into place at the end, so ``out`` is only ever absent, the old index or the new
one. Dense builds cache the corpus embeddings in ``<out>.work/`` as one ``.npy`` file per shard of ``shard_size``
passages (each written under a temporary name, then renamed): rerunning an interrupted build with the same corpus
and encoder encodes only the missing shards. The work folder is removed once the index is in place.

Embedding is pipelined: within a shard, ``Encoder.encode_passages`` tokenises ahead in a thread over length-ordered
batches; a finished shard is written by a thread while the next one is encoded; with several ``devices`` (by default
every visible GPU when there are more than one) each runs an encoder in its own process on whole shards, writing
its shards itself, while this process reads the corpus and writes the passage store.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import platform
import shutil
import tempfile
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from .base import Passage, iter_corpus

if TYPE_CHECKING:
    import faiss

    from .dense import Encoder

BACKENDS = ("bm25", "dense", "lucene")
MANIFEST = "manifest.json"
TRAIN_SAMPLE = 200_000
"""At most this many embeddings train an index that needs training (IVF, PQ)."""


def build_index(
    corpus: str | Path,
    out: str | Path,
    *,
    backend: str = "bm25",
    encoder: Encoder | str = "minilm",
    encoder_dtype: str = "auto",
    devices: Sequence[str] | None = None,
    index_type: str = "Flat",
    fp16: bool = False,
    batch_size: int = 256,
    shard_size: int = 50_000,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the ``backend`` index of ``corpus`` (a jsonl path, or ``"two_hop"``: the bundled one) into ``out``;
    returns its manifest.

    Dense options: ``encoder`` (an :class:`~research_plugin.retrieval.dense.Encoder`, ``"minilm"``, or a
    sentence-transformers path / name) and its ``encoder_dtype`` (when named; ``auto``: float16 on a GPU, float32
    elsewhere), the ``devices`` to encode on in parallel (``["cuda:0", "cuda:1"]``; default: every visible GPU when
    there are more than one, else the encoder's own device), faiss ``index_type`` (``Flat``, ``HNSW32``,
    ``IVF1024,PQ48``, ... any ``index_factory`` string), ``fp16`` vector storage, encoding ``batch_size`` and
    ``shard_size``. A ``lucene`` index (pyserini, the ``lucene`` extra) is a plain Lucene index in ``out`` next
    to the manifest. An existing ``out`` is replaced only if it holds an index (a ``manifest.json``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if batch_size <= 0 or shard_size <= 0:
        raise ValueError("batch_size and shard_size must be positive")
    if str(corpus) == "two_hop":
        from research_plugin.data import two_hop_corpus_path

        corpus = two_hop_corpus_path()
    corpus, out = Path(corpus), Path(out)
    if out.exists() and not (out / MANIFEST).exists():
        raise FileExistsError(f"{out} exists and holds no index; not replacing it")
    if backend == "dense":
        from .dense import Encoder, factory_string

        factory = factory_string(index_type, fp16)  # fails fast on a bad combination
        devices = list(devices) if devices is not None else _visible_gpus()
        if not isinstance(encoder, Encoder):
            encoder = Encoder(encoder, dtype=encoder_dtype, device=devices[0] if devices else None)
    if backend == "lucene":
        from .lucene import start_pyserini

        start_pyserini()  # fails fast, naming what to install
    stat = corpus.stat()
    sha256, lines = _digest(corpus, progress)
    work = out.with_name(out.name + ".work")
    with _staged(out) as tmp:
        if backend == "bm25":
            manifest, settings = _build_bm25(corpus, tmp)
        elif backend == "lucene":
            manifest, settings = _build_lucene(corpus, tmp, lines, progress)
        else:
            manifest, settings = _build_dense(
                corpus,
                tmp,
                work,
                encoder,
                factory,
                devices=devices,
                batch_size=batch_size,
                shard_size=shard_size,
                key=sha256,
                lines=lines,
                progress=progress,
            )
            manifest.update(index_type=index_type, fp16=fp16)
        manifest.update(
            backend=backend,
            index_id=hashlib.sha256(json.dumps([sha256, backend, settings], sort_keys=True).encode()).hexdigest()[:16],
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            corpus={"path": str(corpus.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
            corpus_sha256=sha256,
            versions=_versions(backend),
        )
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    if backend == "dense":
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _build_bm25(corpus: Path, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``BM25Retriever``'s own saved layout; the settings are those its manifest records."""
    from .bm25 import BM25Retriever

    BM25Retriever(corpus, index_dir=tmp)
    if not (tmp / MANIFEST).exists():
        raise RuntimeError(f"bm25: the index could not be saved to {tmp} (see the log)")
    manifest: dict[str, Any] = json.loads((tmp / MANIFEST).read_text())
    return manifest, {k: manifest[k] for k in ("format", "stemmer", "stopwords")}


def _build_lucene(corpus: Path, tmp: Path, lines: int, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Lucene index of the corpus rows as ``{"id", "contents"}`` JSON, stored raw (Anserini's defaults otherwise)."""
    from .lucene import LUCENE_FORMAT_VERSION, index_passages

    with tqdm(total=lines, desc="index", unit="passage", disable=not progress) as bar:
        count = index_passages(iter_corpus(corpus), tmp, threads=os.cpu_count() or 1, bar=bar)
    settings = {"format": LUCENE_FORMAT_VERSION, "analyzer": "anserini-english-porter", "stored": "raw"}
    return {**settings, "passages": count}, settings


def _build_dense(
    corpus: Path,
    tmp: Path,
    work: Path,
    encoder: Encoder,
    factory: str,
    *,
    devices: list[str],
    batch_size: int,
    shard_size: int,
    key: str,
    lines: int,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Embed the corpus shard by shard (reusing finished shards of the same ``key``, the corpus hash), then index."""
    import faiss

    from .dense import DENSE_FORMAT_VERSION, INDEX_FILE, OFFSETS_FILE, PASSAGES_FILE, passage_line

    _open_work_dir(work, {"corpus_sha256": key, "encoder": encoder.info(), "shard_size": shard_size})
    offsets = array("q", [0])
    shards: list[Path] = []
    with (
        open(tmp / PASSAGES_FILE, "wb") as f,
        tqdm(total=lines, desc="encode", unit="passage", disable=not progress) as bar,
        _ShardEncoder(encoder, devices, batch_size, bar) as shard_encoder,
    ):
        for number, shard in enumerate(_batched(iter_corpus(corpus), shard_size)):
            for passage in shard:
                f.write(passage_line(passage))
                offsets.append(f.tell())
            path = work / f"shard-{number:05d}.npy"
            shards.append(path)
            if _rows(path) == len(shard):
                bar.update(len(shard))  # encoded by an earlier, interrupted run
            else:
                shard_encoder.submit(shard, path)
    np.save(tmp / OFFSETS_FILE, np.frombuffer(offsets, dtype=np.int64))
    index = _faiss_index(shards, len(offsets) - 1, factory, progress)
    faiss.write_index(index, str(tmp / INDEX_FILE))
    identity = {k: encoder.info()[k] for k in ("name", "query_prefix", "passage_prefix", "dtype")}
    manifest = {
        "format": DENSE_FORMAT_VERSION,
        "passages": index.ntotal,
        "encoder": encoder.info(),
        "factory": factory,
        "dimension": index.d,
        "metric": "inner_product",
    }
    return manifest, {"format": DENSE_FORMAT_VERSION, "encoder": identity, "factory": factory}


def _visible_gpus() -> list[str]:
    """Every CUDA device, when there are more than one (one encoder each); else none (the encoder's own device)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] if count > 1 else []


class _ShardEncoder:
    """Embeds shards and writes each to its ``.npy`` file, overlapping the work: on one device the encoder runs here
    and a thread writes shard k while shard k + 1 is encoded; on several, one process per device encodes and
    writes whole shards (at most two queued per process). Leaving the block waits for every shard and raises the
    first failure; on a failure, or when the block raised, the shards not yet started are cancelled (only those
    being encoded or written finish) and the error goes through."""

    def __init__(self, encoder: Encoder, devices: list[str], batch_size: int, bar: tqdm) -> None:
        self.encoder, self.devices, self.batch_size, self.bar = encoder, devices, batch_size, bar
        self._pool: Executor
        self._pending: deque[Future[int]] = deque()
        self._devices_queue: Any = None  # the device processes take their devices from it

    def __enter__(self) -> _ShardEncoder:
        if len(self.devices) > 1:
            import multiprocessing as mp

            context = mp.get_context("spawn")  # CUDA cannot be used in a forked child
            self._devices_queue = context.Queue()
            for device in self.devices:
                self._devices_queue.put(device)
            self._pool = ProcessPoolExecutor(
                len(self.devices),
                mp_context=context,
                initializer=_start_worker,
                initargs=(self.encoder.info(), self._devices_queue),
            )
        else:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
        return self

    def submit(self, shard: list[Passage], path: Path) -> None:
        if len(self.devices) > 1:
            while len(self._pending) >= 2 * len(self.devices):
                self.bar.update(self._pending.popleft().result())
            self._pending.append(self._pool.submit(_encode_shard, shard, path, self.batch_size))
            return
        embeddings = self.encoder.encode_passages(shard, self.batch_size, self.bar)
        while self._pending:  # one write in flight: memory stays at two shards
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(_save_npy, path, embeddings))

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        try:
            while self._pending and error is None:
                rows = self._pending.popleft().result()
                if len(self.devices) > 1:
                    self.bar.update(rows)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._devices_queue is not None:
                self._devices_queue.close()
                self._devices_queue.join_thread()


_worker_encoder: Encoder | None = None


def _start_worker(info: dict[str, str], devices: Any) -> None:
    """A device process's encoder: the build's encoder, on the next free device."""
    global _worker_encoder
    from .dense import Encoder

    device = devices.get()
    _worker_encoder = Encoder(
        info["path"],
        query_prefix=info["query_prefix"],
        passage_prefix=info["passage_prefix"],
        dtype=info["dtype"],
        device=device,
    )


def _encode_shard(shard: list[Passage], path: Path, batch_size: int) -> int:
    assert _worker_encoder is not None
    _save_npy(path, _worker_encoder.encode_passages(shard, batch_size))
    return len(shard)


def _faiss_index(shards: list[Path], count: int, factory: str, progress: bool) -> faiss.Index:
    """An inner-product index of the shards' embeddings, trained first on a sample when the type needs it."""
    import faiss

    dimension = np.load(shards[0], mmap_mode="r").shape[1]
    index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        rows = np.sort(np.random.default_rng(0).choice(count, size=min(count, TRAIN_SAMPLE), replace=False))
        sample, start = [], 0
        for path in shards:
            embeddings = np.load(path, mmap_mode="r")
            end = start + len(embeddings)
            sample.append(embeddings[rows[(rows >= start) & (rows < end)] - start])
            start = end
        index.train(np.concatenate(sample))
    for path in tqdm(shards, desc="index", unit="shard", disable=not progress):
        index.add(np.load(path))
    return index


def _open_work_dir(work: Path, key: dict[str, Any]) -> None:
    """Make ``work`` hold only shards computed for ``key`` (corpus, encoder, shard size)."""
    key_file = work / "key.json"
    if work.exists():
        if not key_file.exists() and any(work.iterdir()):
            raise FileExistsError(f"{work} exists and is not an index build's work folder")
        if key_file.exists() and json.loads(key_file.read_text()) != key:
            shutil.rmtree(work)  # embeddings of another corpus or encoder
    work.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key, indent=1))


def _rows(path: Path) -> int:
    """Rows of a finished shard file; -1 when there is none."""
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return -1


def _save_npy(path: Path, embeddings: np.ndarray) -> int:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.save(f, embeddings)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return len(embeddings)


def _batched(passages: Iterable[Passage], size: int) -> Iterator[list[Passage]]:
    iterator = iter(passages)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A fresh sibling folder that replaces ``out`` when the block succeeds and is removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp made it private
        if out.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _digest(path: Path, progress: bool) -> tuple[str, int]:
    """SHA-256 and line count of a file."""
    digest, lines = hashlib.sha256(), 0
    with (
        open(path, "rb") as f,
        tqdm(total=path.stat().st_size, desc="hash", unit="B", unit_scale=True, disable=not progress) as bar,
    ):
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            bar.update(len(chunk))
    return digest.hexdigest(), lines


def _versions(backend: str) -> dict[str, str]:
    import research_plugin

    versions = {"python": platform.python_version(), "research_plugin": research_plugin.__version__}
    if backend == "lucene":
        from .lucene import runtime_versions

        return {**versions, **runtime_versions()}
    modules = ["numpy", "bm25s"] if backend == "bm25" else ["numpy", "faiss", "sentence_transformers", "torch"]
    for name in modules:
        versions[name] = __import__(name).__version__
    return versions
