#!/usr/bin/env python
"""Does the embedded default learn? Validation answer F1 over training, for several seeds and two negative controls.

Runs the main job (``tiny_cpu_grpo`` through verl's launcher, warm cache) once per seed and variant, validating on
the fact world's held-out questions every ``--test-freq`` steps:

- ``default``: the recipe as it ships;
- ``sign_flipped``: the reward negated (``bench/negated_reward.py``), so GRPO's advantage changes sign;
- ``unmasked``: ``search_agent.mask_results=false``, retrieved tokens trained as if the policy wrote them.

Seeds set ``data.seed`` (the order of the questions) and ``actor_rollout_ref.rollout.seed`` (sampling). The verdict
is the issue's criterion: mean F1 at the last validation minus F1 at step 0 (the same for every seed: greedy
validation of the same starting policy) larger than three times the seed-to-seed spread (standard deviation) of
the last validation's F1. JSON and a PNG (F1, reward and searches per question over the steps) in ``--out-dir``.

    python bench/learning.py [--steps 20] [--test-freq 5] [--seeds 1 2 3] [--variants default sign_flipped unmasked]
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

from research_plugin.verl.run_report import validation_means  # noqa: E402

RECIPES = REPO / "research_plugin" / "recipes"
VARIANTS = {
    "default": [],
    "sign_flipped": [
        f"reward.custom_reward_function.path={REPO / 'bench' / 'negated_reward.py'}",
        "reward.custom_reward_function.name=compute_score",
    ],
    "unmasked": ["+search_agent.mask_results=false"],
}
REPORTED = ("f1", "reward", "num_searches")


def run_job(variant: str, seed: int, steps: int, test_freq: int, extra: list[str]) -> dict:
    """One main job; its validations as ``{var: [[step, value], ...]}``."""
    with tempfile.TemporaryDirectory(prefix=f"bench-learning-{variant}-{seed}-") as tmp:
        cmd = [
            sys.executable, "-m", "verl.trainer.main_ppo",
            "--config-path", str(RECIPES), "--config-name", "tiny_cpu_grpo", *VARIANTS[variant],
            f"trainer.total_training_steps={steps}", f"trainer.test_freq={test_freq}", "trainer.save_freq=-1",
            f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}",
            f"trainer.default_local_dir={tmp}/run", f"hydra.run.dir={tmp}/hydra", *extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        p = subprocess.run(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - start
        if p.returncode != 0:
            raise RuntimeError(f"{variant} seed {seed}: main_ppo failed:\n{p.stdout[-4000:]}")
        lines = [json.loads(x) for x in Path(tmp, "run", "metrics.jsonl").read_text().splitlines() if x.strip()]
    curves: dict[str, list[list[float]]] = {var: [] for var in REPORTED}
    tokens = {"retrieved": 0.0, "masked": 0.0}  # over the training steps: what the rollout inserted, what got mask 0
    for line in lines:
        for kind in tokens:
            tokens[kind] += float(line["data"].get(f"search/{kind}_tokens/sum", 0.0))
        means = validation_means(line["data"])
        for var in REPORTED:
            if var in means:
                curves[var].append([line["step"], round(means[var], 4)])
    if not curves["f1"] or curves["f1"][0][0] != 0:
        raise RuntimeError(f"{variant} seed {seed}: no step-0 validation in metrics.jsonl")
    return {
        "variant": variant, "seed": seed, "wall_s": round(wall, 1), "validation": curves,
        "retrieved_tokens": int(tokens["retrieved"]), "masked_tokens": int(tokens["masked"]),
    }  # fmt: skip


def verdict(runs: list[dict]) -> dict:
    """Per variant: F1 at step 0, at the last validation (mean and seed spread), and whether it passes."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        curves = [r["validation"]["f1"] for r in runs if r["variant"] == variant]
        start = statistics.mean(c[0][1] for c in curves)
        last = [c[-1][1] for c in curves]
        spread = statistics.stdev(last) if len(last) > 1 else 0.0
        rise = statistics.mean(last) - start
        out[variant] = {
            "f1_step0": round(start, 4),
            "f1_last_mean": round(statistics.mean(last), 4),
            "f1_last_per_seed": last,
            "seed_spread": round(spread, 4),
            "rise": round(rise, 4),
            "learns": len(last) > 1 and rise > 3 * spread and rise > 0,
        }
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"default": "tab:blue", "sign_flipped": "tab:red", "unmasked": "tab:orange"}
    fig, axes = plt.subplots(1, len(REPORTED), figsize=(5 * len(REPORTED), 3.8))
    for ax, var in zip(axes, REPORTED):
        for r in runs:
            pts = r["validation"][var]
            label = f"{r['variant']} (seed {r['seed']})"
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", color=colours.get(r["variant"]), label=label)
        ax.set_xlabel("training step")
        ax.set_title(f"validation {var}")
    axes[0].legend(fontsize=7)
    fig.suptitle("tiny_cpu_grpo: validation on the fact world's held-out questions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--test-freq", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override for every run")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--name", default="learning")
    args = ap.parse_args(argv)

    from research_plugin.demo.assets import demo_model

    demo_model()  # the warm cache the main job's 10 minutes assume
    runs, failed = [], []
    for variant in args.variants:
        for seed in args.seeds:
            print(f"[learning] {variant} seed {seed}: {args.steps} steps ...", flush=True)
            try:
                run = run_job(variant, seed, args.steps, args.test_freq, args.override)
            except RuntimeError as e:  # recorded; the other runs go on
                print(f"[learning]   failed: {str(e)[-2000:]}", flush=True)
                failed.append({"variant": variant, "seed": seed, "error": str(e)[-2000:]})
                continue
            print(f"[learning]   F1 {run['validation']['f1']}  ({run['wall_s']} s)", flush=True)
            runs.append(run)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir",)},
        "runs": runs,
        "failed": failed,
        "verdict": verdict(runs),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.out_dir / f"{args.name}.png")
    print(json.dumps(result["verdict"], indent=2))
    return result


if __name__ == "__main__":
    main()
