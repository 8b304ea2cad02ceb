#!/usr/bin/env python
"""The main job with each rollout engine, end to end: the plugin's ``hf`` backend vs verl's own vLLM server on
vLLM's CPU build (``+rollout_engine=vllm_cpu``).

Runs ``python -m verl.trainer.main_ppo --config-path recipes --config-name tiny_cpu_grpo`` (warm cache: the tiny
policy is built first) with each engine, alternating, ``--repeats`` times, and records the whole job's wall time,
the time to the first step's metrics (start-up: Ray, workers, the rollout server), and per step ``timing_s/step``,
``timing_s/gen`` (rollout) and the rollout-vs-trainer log-prob difference. JSON and a PNG in ``--out-dir``.

    python bench/rollout_engines.py [--steps 4] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from research_plugin.dynamics.training_logs import parse_console  # noqa: E402

RECIPES = REPO / "research_plugin" / "recipes"
ENGINES = {"hf": [], "vllm_cpu": ["+rollout_engine=vllm_cpu"]}
STEP_KEYS = ("timing_s/step", "timing_s/gen", "training/rollout_probs_diff_mean", "response_length/mean")


def run_job(engine: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as tmp:
        cmd = [
            sys.executable, "-m", "verl.trainer.main_ppo",
            "--config-path", str(RECIPES), "--config-name", "tiny_cpu_grpo", *ENGINES[engine],
            f"trainer.total_training_steps={steps}", "trainer.save_freq=-1",
            f"trainer.default_local_dir={tmp}/ckpt", f"hydra.run.dir={tmp}/hydra",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
        start = time.perf_counter()
        first_step = None
        lines = []
        with subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
            for line in p.stdout:
                lines.append(line)
                if first_step is None and " step:1 - " in line:
                    first_step = time.perf_counter() - start
        wall = time.perf_counter() - start
    if p.returncode != 0:
        raise RuntimeError(f"{engine}: main_ppo failed:\n{''.join(lines[-40:])}")
    series = parse_console(lines)
    per_step = {key: [series.get(key, {}).get(s) for s in range(1, steps + 1)] for key in STEP_KEYS}
    return {"wall_s": round(wall, 1), "first_step_metrics_at_s": round(first_step or 0, 1), "per_step": per_step}


def summarise(runs: list[dict]) -> dict:
    later = [t for r in runs for t in r["per_step"]["timing_s/step"][1:] if t is not None]
    gen = [t for r in runs for t in r["per_step"]["timing_s/gen"][1:] if t is not None]
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "start_up_s": statistics.median(r["first_step_metrics_at_s"] - r["per_step"]["timing_s/step"][0] for r in runs),
        "first_step_s": statistics.median(r["per_step"]["timing_s/step"][0] for r in runs),
        "later_step_s": round(statistics.median(later), 2) if later else None,
        "later_gen_s": round(statistics.median(gen), 2) if gen else None,
        "max_rollout_probs_diff": max(
            d for r in runs for d in r["per_step"]["training/rollout_probs_diff_mean"] if d is not None
        ),
    }


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(result["engines"])
    summ = [result["engines"][n]["summary"] for n in names]
    ax1.bar(names, [s["start_up_s"] for s in summ], label="start-up")
    ax1.bar(names, [s["wall_s"] - s["start_up_s"] for s in summ], bottom=[s["start_up_s"] for s in summ],
            label=f"{result['steps']} steps + shutdown")  # fmt: skip
    ax1.set_ylabel("seconds")
    ax1.set_title("whole main job")
    ax1.legend()
    for name in names:
        steps = result["engines"][name]["runs"][0]["per_step"]["timing_s/step"]
        ax2.plot(range(1, len(steps) + 1), steps, marker="o", label=name)
    ax2.set_xlabel("step")
    ax2.set_ylabel("timing_s/step")
    ax2.set_title("per step")
    ax2.legend()
    fig.suptitle(f"tiny_cpu_grpo on {result['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {e: [] for e in args.engines}
    for i in range(args.repeats):
        for engine in args.engines:
            print(f"[{i + 1}/{args.repeats}] main job with {engine} ...", file=sys.stderr, flush=True)
            runs[engine].append(run_job(engine, args.steps))
            print(f"  {runs[engine][-1]['wall_s']} s", file=sys.stderr, flush=True)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "steps": args.steps,
        "repeats": args.repeats,
        "engines": {e: {"summary": summarise(rs), "runs": rs} for e, rs in runs.items()},
    }
    print(f"\n{'engine':10s} {'job s':>7s} {'start-up s':>10s} {'step 1 s':>9s} {'later step s':>12s} "
          f"{'later gen s':>11s} {'max logprob diff':>16s}")  # fmt: skip
    for engine, r in result["engines"].items():
        s = r["summary"]
        print(f"{engine:10s} {s['wall_s']:7.1f} {s['start_up_s']:10.1f} {s['first_step_s']:9.1f} "
              f"{s['later_step_s']:12.2f} {s['later_gen_s']:11.2f} {s['max_rollout_probs_diff']:16.2e}")  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "rollout-engines.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out} (+ .png)")


if __name__ == "__main__":
    main()
