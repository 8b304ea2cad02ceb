"""``bench/index_build.py`` at toy size: both encodings give the same vectors, and the data-parallel build runs
with two device processes (both on the CPU here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "index_build.py"


def test_quick_run_with_two_devices(tmp_path: Path) -> None:
    args = ["--quick", "--passages", "64", "--batch-size", "16", "--devices", "cpu,cpu", "--out-dir", str(tmp_path)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "index-build-cpu-quick.json").read_text())
    assert (tmp_path / "index-build-cpu-quick.png").stat().st_size > 0
    encode = summary["encode"]
    assert encode["max_abs_difference"] < 1e-4
    assert encode["plain"]["passages_per_s"] > 0 and encode["ours"]["passages_per_s"] > 0
    assert 80 < summary["word_pieces_per_passage"] < 200  # title + 100 words, as wiki-18
    build = summary["build"]
    assert build["1"]["devices"] == ["cpu"] and build["2"]["devices"] == ["cpu", "cpu"]
    rates = [build[n]["passages_per_s"] for n in ("1", "2")]
    assert min(rates) > 0 and build["scaling"] == round(rates[1] / rates[0], 3)  # all devices against one
