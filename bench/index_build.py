#!/usr/bin/env python
"""Passage-embedding benchmark: the index builder's pipelined encoding against a plain sentence-transformers
``encode`` loop on the same passages, in one run; with several devices, the data-parallel build's scaling.

Passages are wiki-18-shaped: a title and a 100-word chunk, one in seven a shorter article tail (5-99 words), words
drawn Zipf-wise from the bundled corpus's English vocabulary (~1.3 word pieces a word, as in Wikipedia text).

  (plain)  ``SentenceTransformer.encode`` over ``--batch-size`` passages at a time, in corpus order, as the builder
           did before (sentence-transformers sorts by length only within each call);
  (ours)   ``Encoder.encode_passages``: length-ordered batches over the whole input, tokenising batch k + 1 in a
           thread while batch k runs through the model;
  (build)  with ``--devices A,B,...``: ``build_index`` (dense, Flat) on 1, then on all of the devices, one process
           each, shard files written as they finish.

Each encoding is timed ``--repeats`` times, alternating, after a warm-up; the median counts. JSON and PNG go to
``--out-dir`` (``index-build-<device>[-quick].json``).

    python bench/index_build.py --quick                          # CPU, MiniLM, 1,000 passages
    python bench/index_build.py                                  # CPU, MiniLM, 4,000 passages: ~8 min on 2 cores
    python bench/index_build.py --device cuda --encoder e5-base --passages 100000 --devices cuda:0,cuda:1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

WIKI18_PASSAGES = 21_015_324
TAIL_SHARE = 1 / 7  # wiki-18 splits articles into 100-word chunks: an article's last one is shorter


def wiki_like_passages(n: int, seed: int = 0) -> list[Any]:
    """``n`` title + text passages of wiki-18's shape over the bundled corpus's vocabulary."""
    import re

    import numpy as np

    from research_plugin.data import two_hop_corpus_path
    from research_plugin.retrieval import Passage, iter_corpus

    words: dict[str, int] = {}
    for passage in iter_corpus(two_hop_corpus_path()):
        for word in re.findall(r"[A-Za-z][a-z]+", passage.contents):
            words[word] = words.get(word, 0) + 1
    vocab = sorted(words, key=lambda w: -words[w])
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(5, 100)) if rng.random() < TAIL_SHARE else 100
        ranks = np.minimum(rng.zipf(1.3, size=length + 3), len(vocab)) - 1
        out.append(Passage(str(i), " ".join(vocab[r] for r in ranks[:3]), " ".join(vocab[r] for r in ranks[3:])))
    return out


def encoder_path(name: str, folder: Path, passages: list[Any]) -> str:
    """``minilm`` (bundled weights), or an E5-base-v2-shaped / small BERT with random weights built here."""
    if name == "minilm":
        return name
    from gpu_check import random_encoder

    texts = [p.contents for p in passages[:5000]]
    return str(random_encoder(folder, texts, e5_base=name == "e5-base", max_seq_length=512))


def time_encodings(encoder: Any, passages: list[Any], batch_size: int, repeats: int, device: str) -> dict[str, Any]:
    """Seconds of (plain) and (ours) over the same passages, alternating; also checks they give the same vectors."""
    import numpy as np
    from gpu_check import sync

    texts = [encoder.passage_prefix + p.contents for p in passages]

    def plain() -> np.ndarray:
        parts = [
            encoder.model.encode(texts[s : s + batch_size], batch_size=batch_size, normalize_embeddings=True)
            for s in range(0, len(texts), batch_size)
        ]
        return np.concatenate(parts)

    def ours() -> np.ndarray:
        return encoder.encode_passages(passages, batch_size)

    runs: dict[str, list[float]] = {"plain": [], "ours": []}
    vectors = {}
    warm = passages[: min(len(passages), batch_size)]
    encoder.encode_passages(warm, batch_size)
    encoder.model.encode([p.contents for p in warm], batch_size=batch_size)
    for r in range(repeats):
        for name, run in (("plain", plain), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("plain", plain)):
            sync(device)
            start = time.perf_counter()
            vectors[name] = run()
            sync(device)
            runs[name].append(time.perf_counter() - start)
            print(f"  {name:<6} run {r + 1}: {len(passages) / runs[name][-1]:8.1f} passages/s", flush=True)
    difference = float(np.abs(vectors["plain"] - vectors["ours"]).max())
    result = {
        name: {
            "seconds": [round(t, 3) for t in times],
            "passages_per_s": round(len(passages) / statistics.median(times), 1),
        }
        for name, times in runs.items()
    }
    result["speedup"] = round(result["ours"]["passages_per_s"] / result["plain"]["passages_per_s"], 3)
    result["max_abs_difference"] = difference
    return result


def time_builds(model: str, dtype: str, passages: list[Any], devices: list[str], batch_size: int) -> dict[str, Any]:
    """``build_index`` passages/s on the first device alone, then on all of them."""
    from research_plugin.retrieval.base import Passage
    from research_plugin.retrieval.index_builder import build_index

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        with corpus.open("w") as f:
            for p in passages:
                assert isinstance(p, Passage)
                f.write(json.dumps({"id": p.id, "contents": p.contents}) + "\n")
        shard = max(16, len(passages) // (4 * len(devices)))  # a few shards per device
        for use in ([devices[0]], devices):
            start = time.perf_counter()
            build_index(
                corpus, Path(tmp) / f"index-{len(use)}", backend="dense", encoder=model, encoder_dtype=dtype,
                devices=use, batch_size=batch_size, shard_size=shard, progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            out[str(len(use))] = {
                "devices": use,
                "seconds": round(seconds, 2),
                "passages_per_s": round(len(passages) / seconds, 1),
            }
            print(f"  build on {len(use)} device(s): {len(passages) / seconds:8.1f} passages/s", flush=True)
    if len(devices) > 1:
        out["scaling"] = round(out[str(len(devices))]["passages_per_s"] / out["1"]["passages_per_s"], 3)
    return out


def make_plot(summary: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: skipping the plot"
    enc = summary["encode"]
    labels = ["plain ST encode loop", "ours (pipelined)"]
    values = [enc["plain"]["passages_per_s"], enc["ours"]["passages_per_s"]]
    for key, row in summary.get("build", {}).items():
        if key != "scaling":
            labels.append(f"build_index, {key} device(s)")
            values.append(row["passages_per_s"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(labels, values, color=["gray", "tab:blue"] + ["tab:green"] * (len(values) - 2))
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}", va="center")
    cfg = summary["config"]
    ax.set_xlabel("passages / s")
    ax.set_title(
        f"{cfg['encoder']} {summary['dtype']} on {summary['device_name']}, {cfg['passages']:,} wiki-18-shaped passages",
        fontsize="medium",
    )
    ax.invert_yaxis()
    ax.set_xlim(right=max(values) * 1.2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="device of the encodings compared (default cpu)")
    p.add_argument("--encoder", choices=["minilm", "e5-base", "small"], default="minilm")
    p.add_argument("--dtype", default="auto", help="encoder precision (default auto: float16 on a GPU)")
    p.add_argument("--passages", type=int, help="default 4000 (1000 with --quick)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, help="timed runs of each encoding (default 3; 1 with --quick)")
    p.add_argument("--devices", help="comma-separated devices: also time build_index on one and on all of them")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    args.passages = args.passages or (1000 if args.quick else 4000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else []
    if args.passages < 1 or args.batch_size < 1 or args.repeats < 1:
        p.error("need --passages, --batch-size and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch
    from retrieval.corpus import _shown  # bench/retrieval/

    from research_plugin.retrieval.dense import Encoder

    args = parse_args(argv)
    started = time.time()
    passages = wiki_like_passages(args.passages)
    with tempfile.TemporaryDirectory() as tmp:
        model = encoder_path(args.encoder, Path(tmp), passages)
        encoder = Encoder(model, device=args.device, dtype=args.dtype)
        pieces = encoder.model.tokenizer([p.contents for p in passages[:1000]])["input_ids"]
        per_passage = sum(map(len, pieces)) / len(pieces)
        device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        )  # fmt: skip
        print(
            f"{args.passages} passages, {per_passage:.1f} word pieces each (max {encoder.model.max_seq_length}); "
            f"{args.encoder} {encoder.dtype} on {device_name}, batch {args.batch_size}",
            flush=True,
        )
        summary: dict[str, Any] = {
            "config": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "device_name": device_name,
            "dtype": encoder.dtype,
            "word_pieces_per_passage": round(per_passage, 1),
            "versions": {m: __import__(m).__version__ for m in ("torch", "sentence_transformers", "transformers")},
            "encode": time_encodings(encoder, passages, args.batch_size, args.repeats, args.device),
        }
        enc = summary["encode"]
        summary["wiki18_minutes"] = round(WIKI18_PASSAGES / enc["ours"]["passages_per_s"] / 60, 1)
        print(
            f"plain {enc['plain']['passages_per_s']} passages/s, ours {enc['ours']['passages_per_s']}: "
            f"x{enc['speedup']} (same vectors to {enc['max_abs_difference']:.1e}); wiki-18 at this rate: "
            f"{summary['wiki18_minutes']} min"
        )
        del encoder
        if args.devices:
            summary["build"] = time_builds(model, args.dtype, passages, args.devices, args.batch_size)
    summary["wall_s"] = round(time.time() - started, 1)
    tag = "cpu" if args.device == "cpu" else device_name.replace(" ", "-")
    out = args.out_dir / f"index-build-{tag}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"results: {out}")
    print(make_plot(summary, out.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
