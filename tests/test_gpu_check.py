"""``bench/gpu_check.py`` runs on a lent GPU machine once in a while; here its dry run (every step, toy sizes, CPU)
keeps it from rotting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "gpu-dry-run.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["gpu"] is None

    imports = report["imports"]
    assert imports["status"] == "ok", imports
    assert imports["imported"] > 40 and imports["not_importable"] == {}  # everything imports where verl is installed
    assert imports["bm25_search"] == {"bm25_passages": 3, "error": None}
    assert not imports["jax_imported"] and not imports["cuda_initialised"]

    dense = report["dense_retriever"]
    assert dense["status"] == "ok", dense
    assert dense["bfloat16"]["self_retrieval_top1"] == 1.0 and dense["bfloat16"]["queries_per_s"] > 0

    faiss_gpus = report["faiss_gpus"]  # faiss-cpu here: skipped, saying why
    assert faiss_gpus["status"] == "ok" and "faiss-gpu" in faiss_gpus["skipped"], faiss_gpus

    embedding = report["passage_embedding"]
    assert embedding["status"] == "ok", embedding
    assert embedding["bfloat16"]["passages_per_s"] > 0 and embedding["bfloat16"]["word_pieces_per_passage"] > 50

    generation = report["hf_generation"]
    assert generation["status"] == "ok", generation
    assert generation["model_device"] == "cpu" and generation["generated_tokens"] > 0
