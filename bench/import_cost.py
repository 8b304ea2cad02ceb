#!/usr/bin/env python
"""What the plugin adds to ``import verl``, which every verl process (driver, trainer, rollout, agent-loop and
reward workers) pays.

Fresh interpreters import verl with the plugin switched off (``VERL_USE_EXTERNAL_PLUGINS=none``) and on, in
alternation (``--repeats`` each). It reports the median wall time of the import and the difference; the plugin's
own share timed inside one process (the difference of two wall times is mostly noise); the modules the plugin
adds; which optional backends (retrieval libraries, JAX, vLLM) are loaded after it; and, for each registry the
plugin hooks, the cost of importing the verl module that triggers the registration, with and without the plugin
(what a process that uses it pays on top of verl's own module). JSON in ``--out`` (default
``bench/results/import-cost.json``).

    python bench/import_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ["bm25s", "faiss", "sentence_transformers", "pyserini", "jnius", "jax", "vllm", "numba", "aiohttp"]
TRIGGERS = [
    "verl.experimental.agent_loop.agent_loop",
    "verl.workers.rollout.replica",
    "verl.trainer.ppo.v1",
]

PROBE = """
import json, sys, time
start = time.perf_counter()
import verl
imported = time.perf_counter() - start
trigger = sys.argv[1]
start = time.perf_counter()
if trigger:
    __import__(trigger)
triggered = time.perf_counter() - start
print(json.dumps({"import_verl_s": imported, "trigger_s": triggered, "modules": sorted(sys.modules)}))
"""


def probe(plugin: bool, trigger: str = "") -> dict:
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "auto" if plugin else "none", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, trigger], env=env, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def own_import_s(module: str, after: list[str]) -> float:
    """Seconds to import plugin ``module`` in a process that has already imported verl and ``after`` (plugin off,
    so nothing of ours is loaded before): its own cost, without the noise of two separate ``import verl``."""
    code = (
        "import importlib, sys, time, verl\n"
        f"for name in {after!r}: importlib.import_module(name)\n"
        f"start = time.perf_counter(); importlib.import_module({module!r}); print(time.perf_counter() - start)"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "import-cost.json")
    args = parser.parse_args()

    runs: dict[bool, list[dict]] = {False: [], True: []}
    for i in range(args.repeats):
        for plugin in (False, True):
            runs[plugin].append(probe(plugin))
        print(f"import verl, round {i + 1}/{args.repeats}", file=sys.stderr)
    added = sorted(set(runs[True][-1]["modules"]) - set(runs[False][-1]["modules"]))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "repeats": args.repeats,
        "import_verl_s": {
            "without_plugin": median_of(runs[False], "import_verl_s"),
            "with_plugin": median_of(runs[True], "import_verl_s"),
        },  # fmt: skip
        "modules_added_by_plugin": added,
        "optional_backends_loaded": [m for m in OPTIONAL if m in runs[True][-1]["modules"]],
        "triggers": {},
    }
    result["import_verl_s"]["added"] = round(
        result["import_verl_s"]["with_plugin"] - result["import_verl_s"]["without_plugin"], 3
    )
    # the plugin's own share, timed inside one process (the difference of two wall times is mostly noise)
    own = [own_import_s("research_plugin.verl.plugin", []) for _ in range(args.repeats)]
    result["plugin_import_s"] = round(statistics.median(own), 4)
    hooked = {"research_plugin.verl.agent_loop": TRIGGERS[0], "research_plugin.verl.trainer_modes": TRIGGERS[2]}
    result["registration_import_s"] = {
        name: round(statistics.median(own_import_s(name, [trigger]) for _ in range(args.repeats)), 4)
        for name, trigger in hooked.items()
    }
    for trigger in TRIGGERS:
        cells = {}
        for plugin in (False, True):
            rs = [probe(plugin, trigger) for _ in range(max(1, args.repeats // 2))]
            cells["with_plugin" if plugin else "without_plugin"] = median_of(rs, "trigger_s")
        cells["added"] = round(cells["with_plugin"] - cells["without_plugin"], 3)
        result["triggers"][trigger] = cells
        print(f"import {trigger}: done", file=sys.stderr)

    t = result["import_verl_s"]
    print(f"\nimport verl (median of {args.repeats}, fresh interpreters, {result['machine']})")
    print(f"  without the plugin {t['without_plugin']:.3f} s   with it {t['with_plugin']:.3f} s", end="")
    print(f"   added {t['added']:+.3f} s")
    print(f"  the plugin's own import, timed after verl's: {result['plugin_import_s'] * 1000:.1f} ms")
    print(f"  modules the plugin adds ({len(added)}): {', '.join(added)}")
    print(f"  optional backends loaded: {result['optional_backends_loaded'] or 'none'}")
    print("\nregistration on first import of verl's module (seconds; without / with the plugin / added)")
    for name, seconds in result["registration_import_s"].items():
        print(f"  {name}, imported by its hook after verl's module: {seconds * 1000:.1f} ms")
    for trigger, c in result["triggers"].items():
        print(f"  {trigger:45s} {c['without_plugin']:7.3f} {c['with_plugin']:7.3f} {c['added']:+7.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
