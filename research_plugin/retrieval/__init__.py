"""Retrieval backends for the search tool, built from small specs.

Specs: ``{"type": "bm25", "corpus": "two_hop" | path, "index_dir": ...}``, ``{"type": "dense", "index_dir": ...}`` (a
folder ``research-plugin index build`` made), ``{"type": "lucene", "index_dir": ..., "k1": 0.9, "b": 0.4}`` (any
pyserini / Anserini index; ``"corpus": path`` when it stores no text), ``{"type": "http", "url": ..., ...}``; the
string ``"two_hop"`` is bm25 over the bundled two-hop corpus and an ``http(s)://`` string is an HTTP client for that
endpoint. A new backend is one entry in :data:`RETRIEVER_TYPES` (the other spec keys become its keyword arguments).

Every backend is imported when a retriever of its kind is built, so importing this package (which the agent loop
does in every verl process) loads none of bm25s, faiss, sentence-transformers, pyserini or aiohttp.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

from ..core.settings import plain
from .base import Passage, Retriever, SearchResult, iter_corpus

__all__ = [
    "RETRIEVER_TYPES",
    "BM25Retriever",
    "HTTPRetriever",
    "Passage",
    "Retriever",
    "SearchResult",
    "build_retriever",
    "built_retriever",
    "check_spec",
    "get_retriever",
    "iter_corpus",
]

RetrieverSpec = Mapping[str, Any] | str


def _bm25(**options: Any) -> Retriever:
    """``BM25Retriever``, imported on use: it needs ``bm25s`` and ``PyStemmer``."""
    try:
        from .bm25 import BM25Retriever
    except ImportError as e:
        raise ImportError(f"{e}: the bm25 retriever needs `pip install bm25s PyStemmer`") from e

    return BM25Retriever(**options)


def _http(**options: Any) -> Retriever:
    """``HTTPRetriever`` (aiohttp), imported on use: a client of a ``/retrieve`` server."""
    from .http_client import HTTPRetriever

    return HTTPRetriever(**options)


def _dense(**options: Any) -> Retriever:
    """``DenseRetriever``, imported on use: it needs the ``dense`` extra (faiss, sentence-transformers)."""
    from .dense import DenseRetriever

    return DenseRetriever(**options)


def _lucene(**options: Any) -> Retriever:
    """``LuceneRetriever``, imported on use: it needs the ``lucene`` extra (pyserini, a Java 21 runtime)."""
    from .lucene import LuceneRetriever

    return LuceneRetriever(**options)


def _ray(**options: Any) -> Retriever:
    """``RayActorRetriever``, imported on use: a client of one index actor shared across a Ray cluster."""
    from .ray_backend import RayActorRetriever

    return RayActorRetriever(**options)


def _latency(**options: Any) -> Retriever:
    """``LatencyRetriever``: a stand-in of set latency with made-up passages, for measuring what a real index's
    timing does to a rollout (``bench/rollout_scale.py``)."""
    from .latency import LatencyRetriever

    return LatencyRetriever(**options)


def _web(**options: Any) -> Retriever:
    """``WebSearchRetriever`` (Serper / SerpApi), imported on use; its API key comes from the environment."""
    from .web import WebSearchRetriever

    return WebSearchRetriever(**options)


RETRIEVER_TYPES: dict[str, Callable[..., Retriever]] = {
    "bm25": _bm25,
    "http": _http,
    "dense": _dense,
    "lucene": _lucene,
    "ray": _ray,
    "web": _web,
    "latency": _latency,
}

RETRIEVER_CLASSES: dict[str, tuple[str, str]] = {
    "bm25": (".bm25", "BM25Retriever"),
    "http": (".http_client", "HTTPRetriever"),
    "dense": (".dense", "DenseRetriever"),
    "lucene": (".lucene", "LuceneRetriever"),
    "ray": (".ray_backend", "RayActorRetriever"),
    "web": (".web", "WebSearchRetriever"),
    "latency": (".latency", "LatencyRetriever"),
}
"""The class each type builds (module, name): :func:`check_spec` checks a spec's keys against its constructor."""

_LAZY = {"BM25Retriever": ".bm25", "HTTPRetriever": ".http_client"}


def __getattr__(name: str) -> Any:
    """``BM25Retriever`` and ``HTTPRetriever`` as attributes of the package, imported when first asked for."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_cache: dict[Hashable, Retriever] = {}
_cache_lock = threading.Lock()


def _normalise(spec: RetrieverSpec) -> dict[str, Any]:
    if isinstance(spec, str):
        if spec == "two_hop":
            return {"type": "bm25", "corpus": "two_hop"}
        if spec.startswith(("http://", "https://")):
            return {"type": "http", "url": spec}
        raise ValueError(f"retriever spec string must be 'two_hop' or an http(s):// url, got {spec!r}")
    if not isinstance(spec, Mapping):
        raise TypeError(f"retriever spec must be a mapping or a string, got {type(spec).__name__}")
    return plain(spec)


def check_spec(spec: Any, where: str = "retriever spec") -> RetrieverSpec:
    """``spec`` checked before anything is built or searched (a ``SettingsError``
    names the key, the value and ``where``): a known string, a known ``type``, and keys that its class's constructor
    takes, with values of their annotated types (``"0.9"`` for a float is read as 0.9). A type whose class cannot be
    imported here (an extra not installed) has its keys checked when it is built."""
    from ..core.settings import SettingsError, as_mapping, check_arguments, check_choice

    if isinstance(spec, str):
        try:
            _normalise(spec)
        except ValueError as e:
            raise SettingsError(f"{where}: {e}") from None
        return spec
    options = as_mapping(spec, where)
    kind = check_choice(options.pop("type", None), RETRIEVER_TYPES, where, "retriever type")
    if kind in RETRIEVER_CLASSES:
        module, name = RETRIEVER_CLASSES[kind]
        try:
            cls = getattr(importlib.import_module(module, __name__), name)
        except ImportError:
            return {"type": kind, **options}
        options = check_arguments(cls, options, where, f"{kind} retriever options")
        if kind == "ray" and "index" in options:
            options["index"] = check_spec(options["index"], f"{where}: index")
    return {"type": kind, **options}


def retriever_spec(value: str) -> RetrieverSpec:
    """A retriever spec from a command-line value (every command's ``--retriever``, ``serve --index``): 'two_hop', an
    http(s):// URL, a jsonl corpus (BM25), a saved index folder (its manifest names the backend that loads it; a
    bare pyserini / Anserini index is served by lucene) or a JSON spec (``{"type": "latency", "stages": [[66.8,
    0.807]]}``)."""
    from ..core.settings import parse_json, read_mapping_file
    from .lucene import is_lucene_index

    if value == "two_hop" or value.startswith(("http://", "https://")):
        return value
    if value.lstrip().startswith("{"):
        return dict(check_spec(parse_json(value, "retriever spec"), "retriever spec"))
    path = Path(value)
    if is_lucene_index(path) and not (path / "manifest.json").exists():
        return {"type": "lucene", "index_dir": str(path)}
    if path.is_dir():
        manifest = read_mapping_file(path / "manifest.json", f"index manifest {path / 'manifest.json'}")
        return {"type": manifest.get("backend", "bm25"), "index_dir": str(path)}
    if path.is_file():
        return {"type": "bm25", "corpus": str(path)}
    raise ValueError(
        f"a retriever must be 'two_hop' (the bundled corpus), an http(s):// URL, a jsonl corpus, an index folder or a "
        f"JSON spec, not {value!r}"
    )


def build_retriever(spec: RetrieverSpec) -> Retriever:
    """A new retriever for ``spec``; an unknown ``type`` raises ``ValueError`` naming the known ones."""
    options = _normalise(spec)
    kind = options.pop("type", None)
    factory = RETRIEVER_TYPES.get(kind) if isinstance(kind, str) else None
    if factory is None:
        raise ValueError(f"unknown retriever type {kind!r}; known types: {', '.join(sorted(RETRIEVER_TYPES))}")
    return factory(**options)


def _freeze(value: Any) -> Hashable:
    """A hashable key for a plain (dict / list) spec value, insensitive to mapping order."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value


def get_retriever(spec: RetrieverSpec) -> Retriever:
    """The process-wide retriever for ``spec``, built on first use (equal specs share one instance)."""
    options = _normalise(spec)
    key = _freeze(options)
    with _cache_lock:
        retriever = _cache.get(key)
        if retriever is None:
            retriever = _cache[key] = build_retriever(options)
        return retriever


def built_retriever(spec: RetrieverSpec) -> Retriever | None:
    """The process-wide retriever for ``spec`` if :func:`get_retriever` built it already, else None (never builds,
    never waits: an event loop can call it, and go to a thread for :func:`get_retriever` only on a miss)."""
    return _cache.get(_freeze(_normalise(spec)))
