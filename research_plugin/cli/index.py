"""``research-plugin index``: build a BM25, dense or Lucene index folder from a jsonl corpus; print its manifest."""

from __future__ import annotations

import sys

from ..retrieval.index_builder import BACKENDS


def register(sub) -> None:
    p = sub.add_parser("index", help="build retrieval indexes")
    index_sub = p.add_subparsers(dest="index_command", required=True)
    p = index_sub.add_parser("build", help="build a BM25, dense (faiss) or Lucene index folder from a jsonl corpus")
    p.add_argument(
        "--corpus", required=True, help="'two_hop' (bundled) or a jsonl corpus ({id, contents} or {id, title, text})"
    )
    p.add_argument("--backend", choices=BACKENDS, default="bm25", help="lucene: the lucene extra")
    p.add_argument("--out", required=True, help="index folder to create (replaces an older index there)")
    p.add_argument("--encoder", default="minilm", help="'minilm' (bundled) or a sentence-transformers path / name")
    p.add_argument(
        "--encoder-dtype",
        default="auto",
        help="encoder precision: auto (default: float16 on a GPU, float32 elsewhere), float32, bfloat16, float16",
    )
    p.add_argument(
        "--devices",
        help="comma-separated devices to encode on in parallel, one process each (default: every visible GPU when "
        "there are more than one, else one device)",
    )
    p.add_argument("--index-type", default="Flat", help="faiss index_factory string: Flat, HNSW32, IVF1024,PQ48, ...")
    p.add_argument("--batch-size", type=int, default=256, help="passages per encoder batch")
    p.add_argument("--shard-size", type=int, default=50_000, help="passages per resumable embedding shard")
    p.add_argument("--fp16", action="store_true", help="store vectors in fp16 (Flat, HNSW, IVF...,Flat)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Build a BM25, dense or Lucene index folder from a jsonl corpus; print its manifest."""
    import json

    from ..retrieval.index_builder import build_index

    try:
        manifest = build_index(
            args.corpus,
            args.out,
            backend=args.backend,
            encoder=args.encoder,
            encoder_dtype=args.encoder_dtype,
            devices=[d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None,
            index_type=args.index_type,
            fp16=args.fp16,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
        )
    except (OSError, ValueError, ImportError) as e:
        print(f"index build: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=1, ensure_ascii=False))
    return 0
