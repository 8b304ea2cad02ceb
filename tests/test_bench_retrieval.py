"""``bench/retrieval`` against its backend of set latency, shortened to seconds: the whole bench runs (corpus,
(b), (a) and (c) servers, ratios, JSON, plot) and the server batches as the bench's recorded figures say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "retrieval"


def test_latency_backend_run(tmp_path: Path) -> None:
    args = ["--backend", "latency", "--latency", "20,0.5", "--passages", "1000", "--duration", "1.5"]
    args += ["--warmup", "0.3", "--concurrency", "1,16", "--batch-sizes", "1,16", "--quiet-wait", "0"]
    args += ["--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "retrieval-latency-20+0.5.json").read_text())
    assert (tmp_path / "out" / "retrieval-latency-20+0.5.png").stat().st_size > 0
    assert summary["index"] == {"backend": "latency", "stages_ms": [[20.0, 0.5]]}
    cells = {(r["system"], r["concurrency"]): r for r in summary["servers"]}
    assert all(r["errors"] == 0 and r["completed"] > 0 for r in cells.values())
    assert summary["spot_check"]["ours"]["same_as_backend"] == 20  # same answers through HTTP as in-process
    # one batch of 16 takes 28 ms: 16 clients through our server get ~all of it, the per-request server ~1/16th
    backend_16 = summary["backend"]["batches"]["16"]["qps"]
    assert backend_16 > 400
    assert cells[("ours", 16)]["server_metrics"]["mean_batch"] > 12
    assert cells[("ours", 16)]["qps"] > 0.6 * backend_16
    assert cells[("baseline", 16)]["qps"] < 0.2 * backend_16
