#!/usr/bin/env python
"""GPU check: what the plugin does on a CUDA GPU, in one command (< 8 minutes on one GPU, no network).

    python bench/gpu_check.py                    # on a machine with a GPU: writes bench/results/gpu-<gpu name>.json
    python bench/gpu_check.py --wheels wheels/   # first installs the wheels in wheels/ (no index, no deps) beside it
    python bench/gpu_check.py --dry-run          # anywhere: every step at toy sizes on the CPU (the test suite does)
    python bench/gpu_check.py --download-wheels wheels/   # here, with network: the wheels a bare GPU image lacks

It needs a checkout of this repository, torch, transformers, sentence-transformers and numpy (a typical GPU image
has them) and, for the retrieval steps, bm25s, PyStemmer and faiss-cpu (``--download-wheels`` fetches those and
the server's packages as manylinux wheels for the GPU machine's Python, ``--python-version``). verl, Ray and vLLM
are not needed: modules that need them are listed as not importable there. Each step runs in a fresh process, so
one failing step is recorded and the others still run:

1. **imports**: GPU memory (``nvidia-smi``, whole device) while a process holds every plugin module that imports
   there and has searched the bundled corpus with the plugin's BM25 retriever, against the idle baseline taken just
   before; they must be equal, and the process must hold no CUDA context. (On a machine with JAX installed, bm25s
   on its own claims ~75% of the GPU here.)
2. **dense_retriever**: the dense retriever with its encoder on CUDA, in float16 and bfloat16: index the bundled
   corpus, search each passage's own text (it must come first), queries per second.
3. **faiss_gpus**: with faiss-gpu (``--download-wheels DIR --faiss-gpu``), the dense retriever's index on every GPU,
   replicated, sharded and replicated in float16: the class faiss made, self-retrieval top-1, queries/s (skipped,
   and said so, with faiss-cpu).
4. **passage_embedding**: ``Encoder.encode_passages`` of an E5-base-v2-shaped encoder (BERT-base, random weights,
   a WordPiece vocabulary trained here) on title + 100-word passages, batch 512, float16 and bfloat16: passages/s
   and the time wiki-18's 21.0M passages would take.
5. **hf_generation**: the ``hf`` rollout backend's decoder (``HFGenerationServer``) on CUDA with the tiny demo
   policy: 64 concurrent requests of 256 tokens, tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKI18_PASSAGES = 21_015_324
STEPS = ("imports", "dense_retriever", "faiss_gpus", "passage_embedding", "hf_generation")
STEP_TIMEOUT_S = 240
WHEELS = [  # what a bare GPU image (torch, transformers, sentence-transformers, numpy) lacks; pinned as tested
    "bm25s", "PyStemmer", "faiss-cpu", "fastapi", "starlette", "pydantic", "pydantic_core", "uvicorn", "httptools",
    "orjson", "opentelemetry-api", "cachetools", "omegaconf", "antlr4-python3-runtime", "aiohttp", "aiohappyeyeballs",
    "aiosignal", "frozenlist", "multidict", "propcache", "yarl", "annotated-doc", "typing-inspection",
]  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# the orchestrating process: never touches the GPU itself
# ------------------------------------------------------------------------------------------------------------


def nvidia_smi(query: str, kind: str = "gpu") -> list[list[str]] | None:
    """Rows of ``nvidia-smi --query-<kind>=<query>``, or None where there is no NVIDIA GPU."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-{kind}={query}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [[cell.strip() for cell in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]


def gpu_memory_used_mib() -> int | None:
    rows = nvidia_smi("memory.used")
    return int(rows[0][0]) if rows else None


def compute_pids() -> set[int]:
    rows = nvidia_smi("pid", kind="compute-apps") or []
    return {int(r[0]) for r in rows if r and r[0].isdigit()}


def child_env(site: Path | None) -> dict[str, str]:
    paths = [str(site)] if site else []
    paths += [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "TOKENIZERS_PARALLELISM": "false"}


def run_step(step: str, device: str, dry: bool, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--step", step, "--device", device, *(["--dry-run"] if dry else [])]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {STEP_TIMEOUT_S} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"status": "error", "error": (proc.stderr or proc.stdout)[-1500:]}
    return {"status": "ok", "wall_s": round(time.perf_counter() - start, 1), **json.loads(lines[-1])}


def check_imports(env: dict[str, str], dry: bool) -> dict:
    """Step 1: memory of the whole GPU before, and while a process holds every importable plugin module."""
    baseline = None if dry else gpu_memory_used_mib()
    cmd = [sys.executable, __file__, "--step", "imports", "--device", "cpu", "--hold"]
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line, printed = "", []
        while not line.startswith("{"):  # modules may print at import; the step's report is its JSON line
            line = proc.stdout.readline()
            if not line:
                proc.kill()
                return {"status": "error", "error": ("".join(printed) + proc.stderr.read())[-1500:]}
            printed.append(line)
        result = {"status": "ok", **json.loads(line)}
        if baseline is None:
            result["gpu_memory"] = "not measured: no NVIDIA GPU" if not dry else "not measured: dry run"
        else:
            time.sleep(2)  # let a lazily created context show up
            held = gpu_memory_used_mib()
            result["gpu_memory"] = {
                "idle_baseline_mib": baseline,
                "while_plugin_imported_mib": held,
                "equal": held == baseline,
                "process_holds_cuda_context": proc.pid in compute_pids(),
            }
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
        return result
    finally:
        if proc.poll() is None:
            proc.kill()


def install_wheels(wheels: Path) -> Path:
    """Install every wheel in ``wheels`` once into ``wheels/site`` (no index, no dependencies); returns that folder."""
    site = wheels / "site"
    found = sorted(wheels.glob("*.whl"))
    marker = site / ".installed"
    if not marker.exists() or marker.read_text() != "\n".join(w.name for w in found):
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade", "--target", str(site)]
        subprocess.run([*cmd, *map(str, found)], check=True)
        marker.write_text("\n".join(w.name for w in found))
    return site


def download_wheels(dest: Path, python_version: str, faiss_gpu: bool = False) -> None:
    """The wheels of :data:`WHEELS` for a manylinux x86-64 machine, at the versions ``constraints.txt`` pins
    (faiss-gpu-cu12, unpinned, in place of faiss-cpu with ``faiss_gpu``)."""
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    canon = {re.sub(r"[-_.]+", "-", name).lower(): name for name in pins}
    specs = []
    for name in WHEELS:
        if faiss_gpu and name == "faiss-cpu":
            specs.append("faiss-gpu-cu12")
            continue
        pinned = canon.get(re.sub(r"[-_.]+", "-", name).lower())
        specs.append(f"{name}=={pins[pinned]}" if pinned else name)
    platforms = [f"--platform={p}" for p in ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *platforms]
    subprocess.run([*cmd, "--python-version", python_version, "-d", str(dest), *specs], check=True)
    size = sum(p.stat().st_size for p in dest.glob("*.whl")) / 2**20
    print(f"{len(list(dest.glob('*.whl')))} wheels, {size:.1f} MiB in {dest}")


def orchestrate(args) -> dict:
    site = install_wheels(args.wheels) if args.wheels else None
    env = child_env(site)
    gpus = nvidia_smi("name,memory.total,driver_version")
    dry = args.dry_run or not gpus
    device = "cpu" if dry else "cuda"
    report: dict = {
        "gpu": gpus[0][0] if gpus and not dry else None,
        "gpu_memory_total_mib": int(gpus[0][1]) if gpus and not dry else None,
        "driver": gpus[0][2] if gpus and not dry else None,
        "dry_run": dry,
        "host": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    steps = {"imports": lambda: check_imports(env, dry)}
    steps.update({s: (lambda s=s: run_step(s, device, dry, env)) for s in STEPS[1:]})
    for name, step in steps.items():
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        report[name] = step()
        print(f"[gpu_check] {name}: {report[name].get('status')}", file=sys.stderr, flush=True)
    return report


def default_out(report: dict) -> Path:
    name = "dry-run" if report["dry_run"] else re.sub(r"[^a-z0-9]+", "-", report["gpu"].lower()).strip("-")
    return REPO / "bench" / "results" / f"gpu-{name}.json"


# ------------------------------------------------------------------------------------------------------------
# the steps, each in its own process
# ------------------------------------------------------------------------------------------------------------


def step_imports(hold: bool) -> dict:
    import importlib
    import pkgutil

    import research_plugin

    imported, failed = [], {}
    for info in pkgutil.walk_packages(research_plugin.__path__, "research_plugin."):
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception as e:  # noqa: BLE001 - recorded: a module that needs verl/Ray/vLLM cannot import here
            failed[info.name] = f"{type(e).__name__}: {e}"[:160]
    search: dict = {}
    try:
        from research_plugin.retrieval import get_retriever

        (result,) = asyncio.run(get_retriever("two_hop").search(["Who founded the Orvell Glassworks?"], 3))
        search = {"bm25_passages": len(result.passages), "error": result.error}
    except Exception as e:  # noqa: BLE001
        search = {"error": f"{type(e).__name__}: {e}"[:160]}
    import importlib.util

    torch = sys.modules.get("torch")
    out = {
        "imported": len(imported),
        "not_importable": failed,
        "bm25_search": search,
        "jax_installed": importlib.util.find_spec("jax") is not None,
        "jax_imported": "jax" in sys.modules,
        "cuda_initialised": bool(torch is not None and torch.cuda.is_initialized()),
    }
    print(json.dumps(out), flush=True)
    if hold:
        sys.stdin.readline()  # the orchestrator reads the GPU's memory now
    return out


def wordpiece_tokenizer(folder: Path, texts: list[str], vocab_size: int):
    """A BERT tokenizer with a WordPiece vocabulary trained on ``texts`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    hf = BertTokenizerFast(tokenizer_object=tok)
    hf.save_pretrained(folder)
    return hf


def random_encoder(folder: Path, texts: list[str], *, e5_base: bool, max_seq_length: int) -> Path:
    """A sentence-transformers folder: a random-weight BERT (E5-base-v2's shape, or a small one) + mean pooling."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    tokenizer = wordpiece_tokenizer(folder / "bert", texts, vocab_size=30522 if e5_base else 4000)
    shape = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    if not e5_base:
        shape = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **shape)).save_pretrained(
        folder / "bert"
    )
    bert = models.Transformer(str(folder / "bert"), max_seq_length=max_seq_length)
    SentenceTransformer(modules=[bert, models.Pooling(bert.get_word_embedding_dimension(), "mean")]).save(
        str(folder / "st")
    )
    return folder / "st"


def synthetic_passages(n: int, words: int = 100):
    import numpy as np

    from research_plugin.retrieval import Passage

    rng = np.random.default_rng(0)
    vocab = [f"w{i:x}" for i in range(20_000)]
    ranks = np.minimum(rng.zipf(1.2, size=(n, words + 3)), len(vocab)) - 1
    return [
        Passage(id=str(i), title=" ".join(vocab[j] for j in row[:3]), text=" ".join(vocab[j] for j in row[3:]))
        for i, row in enumerate(ranks)
    ]


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def dtypes(device: str, dry: bool) -> list[str]:
    return ["bfloat16"] if dry and device == "cpu" else ["float16", "bfloat16"]


def step_dense_retriever(device: str, dry: bool) -> dict:
    from research_plugin.data import two_hop_corpus_path
    from research_plugin.retrieval import iter_corpus
    from research_plugin.retrieval.dense import DenseRetriever, Encoder
    from research_plugin.retrieval.index_builder import build_index

    passages = list(iter_corpus(two_hop_corpus_path()))
    out: dict = {"passages": len(passages)}
    with tempfile.TemporaryDirectory() as tmp:
        model = random_encoder(Path(tmp), [p.contents for p in passages], e5_base=False, max_seq_length=256)
        for dtype in dtypes(device, dry):
            encoder = Encoder(model, device=device, dtype=dtype)
            build_index(two_hop_corpus_path(), Path(tmp) / dtype, backend="dense", encoder=encoder, progress=False)
            retriever = DenseRetriever(Path(tmp) / dtype, encoder=encoder)
            queries = [p.contents for p in passages]
            asyncio.run(retriever.search(queries[:8], 1))  # warm-up
            sync(device)
            start = time.perf_counter()
            results = asyncio.run(retriever.search(queries, 1))
            sync(device)
            elapsed = time.perf_counter() - start
            hits = sum(bool(r.passages) and r.passages[0].id == p.id for r, p in zip(results, passages))
            out[dtype] = {
                "encoder_device": str(encoder.model.device),
                "self_retrieval_top1": round(hits / len(passages), 3),
                "queries_per_s": round(len(queries) / elapsed, 1),
                "peak_mib": peak_mib(device),
            }
    return out


def step_faiss_gpus(device: str, dry: bool) -> dict:
    import faiss

    from research_plugin.data import two_hop_corpus_path
    from research_plugin.retrieval import iter_corpus
    from research_plugin.retrieval.dense import DenseRetriever, Encoder
    from research_plugin.retrieval.index_builder import build_index

    gpus = faiss.get_num_gpus()
    if not gpus:
        return {"skipped": f"faiss {faiss.__version__} sees no GPU (faiss-cpu; --download-wheels DIR --faiss-gpu)"}
    passages = list(iter_corpus(two_hop_corpus_path()))
    out: dict = {"faiss": faiss.__version__, "gpus": gpus, "passages": len(passages)}
    with tempfile.TemporaryDirectory() as tmp:
        model = random_encoder(Path(tmp), [p.contents for p in passages], e5_base=False, max_seq_length=256)
        encoder = Encoder(model, device=device)
        build_index(two_hop_corpus_path(), Path(tmp) / "flat", backend="dense", encoder=encoder, progress=False)
        queries = [p.contents for p in passages]
        for name, options in {
            "replicated": {}, "sharded": {"shard": True}, "replicated_fp16": {"gpu_fp16": True},
        }.items():  # fmt: skip
            retriever = DenseRetriever(Path(tmp) / "flat", encoder=encoder, **options)
            asyncio.run(retriever.search(queries[:8], 1))
            start = time.perf_counter()
            results = asyncio.run(retriever.search(queries, 1))
            elapsed = time.perf_counter() - start
            hits = sum(bool(r.passages) and r.passages[0].id == p.id for r, p in zip(results, passages))
            out[name] = {
                "index_class": type(retriever.index).__name__,
                "parallel_batches": retriever.parallel_batches,
                "self_retrieval_top1": round(hits / len(passages), 3),
                "queries_per_s": round(len(queries) / elapsed, 1),
            }
            del retriever
    return out


def step_passage_embedding(device: str, dry: bool) -> dict:
    from research_plugin.retrieval.dense import Encoder

    n, batch = (48, 16) if dry else (20_000, 512)
    passages = synthetic_passages(n)
    shape = "BERT-small (dry run)" if dry else "BERT-base (E5-base-v2), random weights"
    out: dict = {"passages": n, "batch_size": batch, "shape": shape}
    with tempfile.TemporaryDirectory() as tmp:
        texts = [p.contents for p in passages[:5000]]
        model = random_encoder(Path(tmp), texts, e5_base=not dry, max_seq_length=512)
        for dtype in dtypes(device, dry):
            encoder = Encoder(model, device=device, dtype=dtype)
            pieces = encoder.model.tokenizer([p.contents for p in passages[:256]])["input_ids"]
            encoder.encode_passages(passages[:batch], batch_size=batch)  # warm-up
            sync(device)
            start = time.perf_counter()
            embeddings = encoder.encode_passages(passages, batch_size=batch)
            sync(device)
            rate = n / (time.perf_counter() - start)
            out[dtype] = {
                "passages_per_s": round(rate, 1),
                "word_pieces_per_passage": round(sum(map(len, pieces)) / len(pieces), 1),
                "wiki18_minutes": round(WIKI18_PASSAGES / rate / 60, 1),
                "embedding_dim": int(embeddings.shape[1]),
                "peak_mib": peak_mib(device),
            }
            del encoder
    return out


def step_hf_generation(device: str, dry: bool) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_plugin.demo.tiny_model import build_tiny_model
    from research_plugin.verl.hf_generation import HFGenerationServer, Request

    requests_n, tokens = (4, 16) if dry else (64, 256)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "tiny")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).to(device)
    server = HFGenerationServer(model, tokenizer, seed=0, max_batch_size=requests_n)
    prompt = tokenizer.encode("Who founded the Orvell Glassworks?")

    def batch():
        return server.propose_batch([Request(list(prompt), {"temperature": 1.0}, tokens) for _ in range(requests_n)])

    batch()  # warm-up
    sync(device)
    start = time.perf_counter()
    outs = batch()
    sync(device)
    elapsed = time.perf_counter() - start
    generated = sum(len(ids) for ids, _ in outs)
    return {
        "model_device": str(server.device),
        "requests": requests_n,
        "tokens_per_request": tokens,
        "generated_tokens": generated,
        "tokens_per_s": round(generated / elapsed, 1),
        "peak_mib": peak_mib(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON report (default bench/results/gpu-<gpu name>.json)")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU, even where a GPU is present")
    parser.add_argument("--wheels", type=Path, help="a folder of wheels to install (no index, no deps) and use")
    parser.add_argument("--download-wheels", type=Path, metavar="DIR", help="fetch the wheels a GPU image lacks")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (for --download-wheels)")
    parser.add_argument(
        "--faiss-gpu", action="store_true", help="with --download-wheels: faiss-gpu-cu12, not faiss-cpu"
    )
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.download_wheels:
        args.download_wheels.mkdir(parents=True, exist_ok=True)
        download_wheels(args.download_wheels, args.python_version, faiss_gpu=args.faiss_gpu)
        return
    if args.step == "imports":
        step_imports(args.hold)
        return
    if args.step:
        step = {
            "dense_retriever": step_dense_retriever,
            "faiss_gpus": step_faiss_gpus,
            "passage_embedding": step_passage_embedding,
            "hf_generation": step_hf_generation,
        }[args.step]
        print(json.dumps(step(args.device, args.dry_run)), flush=True)
        return

    start = time.perf_counter()
    report = orchestrate(args)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    out = args.out or default_out(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    failed = [s for s in STEPS if report[s].get("status") != "ok"]
    memory = report["imports"].get("gpu_memory")
    if failed or (isinstance(memory, dict) and not memory["equal"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
