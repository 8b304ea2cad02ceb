"""Retrieval-server benchmark: our batching server vs the raw backend vs a per-request server, in one run.

On a deterministic synthetic corpus (Zipf-distributed pseudo-words, ~100 words a passage, titled) it builds, with
research_plugin's own index builder, a BM25 index and/or a dense one (the bundled MiniLM encoder + faiss flat inner
product), cached under ``--work-dir``. For each backend it measures throughput and p50/p99 latency at each
concurrency for

  (a)  ours         ``create_app`` (default batching, result cache off), uvicorn in its own process;
  (a') ours-pN      the same with ``search_processes=N`` (searching in N worker processes);
  (b)  backend      the backend's ``search`` called in-process in batches (the ceiling), in its own process;
  (c)  baseline     a FastAPI sync endpoint calling the backend once per request in the threadpool, own process;

with a light asyncio load client (N coroutines, each on its own keep-alive connection, one Search-R1 ``/retrieve``
query per request, distinct queries) in the main process. ``--backend latency`` replaces the index by a backend of
set latency (``--latency``: stages of a fixed plus a per-query time, slept), a GPU box's regime on any machine.
Every cell is bounded in time and in request count. It prints a table and the target ratios, and writes JSON per
backend (``--out-dir``/retrieval-<backend>[-<encoder dtype>][-quick].json; for the set-latency backend
retrieval-latency.json, or retrieval-latency-<stages>.json for other ``--latency`` stages than the default) and,
with matplotlib, a PNG next to it.

Modules: ``corpus`` (the synthetic corpus, its queries, the indexes), ``backends`` (what is searched),
``servers`` (each system's server in its own process), ``client`` (the load client and its cells),
``backend_run`` ((b), the raw backend), ``report`` (table, plot, ratios), ``main`` (the command line).

    python bench/retrieval --quick                    # smoke run: 20k passages, 3 s cells, both backends
    python bench/retrieval --backend bm25             # 100k passages, 10 s cells, ours-p1 and ours-p2 too
    python bench/retrieval --backend latency          # the H200's dense backend, as a set latency
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TOP_K = 3  # Search-R1's default topk
QUERY_WORDS = 6
VOCAB_SIZE = 50_000
ZIPF_S = 1.07
FORMAT = 1  # bump when the corpus generator changes, so cached corpora are not reused

BACKENDS = ("bm25", "dense")
LATENCY = "latency"
"""A backend of set latency (no index): ``--latency`` stages of ``fixed + per-query`` time, slept, not computed."""
GPU_BOX_LATENCY = "66.8,0.807"
"""One stage fitted to the lent H200's dense backend (fp16 E5-base encoder on the GPU, faiss-cpu Flat 100k x 768 on
16 cores: batches of 64 and 256 at 540 and 936 q/s, i.e. ~118 and ~273 ms)."""
DENSE_ENCODER = "minilm"  # the bundled offline all-MiniLM-L6-v2

TARGET_AB = 0.9
TARGET_AC = 5.0
RATIO_CONCURRENCY = 64
RATIO_CONCURRENCIES = (64, 256)
ERRORS_CONCURRENCY = 256
