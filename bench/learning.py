#!/usr/bin/env python
"""Does the embedded default learn to search? Held-out answer F1 and searches per question over training, for several
RL seeds, two warm-up seeds and two negative controls.

Runs the main job (``tiny_cpu_grpo`` through verl's launcher) once per warm-up seed, variant and RL seed, validating
on the fact world's 80 held-out questions every ``--test-freq`` steps:

- ``default``: the recipe as it ships;
- ``sign_flipped``: the reward negated (``bench/negated_reward.py``), so GRPO's advantage changes sign;
- ``unmasked``: ``search_agent.mask_results=false``, retrieved tokens trained as if the policy wrote them.

Warm-up seed 0 is the policy shipped in the package; another seed is rebuilt from the code (``research-plugin policy
build --seed N``, ~20 min, cached under the plugin's cache folder). RL seeds set ``data.seed`` (the order of the
questions) and ``actor_rollout_ref.rollout.seed`` (sampling). The targets (:data:`TARGETS`), for every RL seed of
every warm-up seed: ``default`` raises F1 by 0.25 or more while searches per question go from at most 0.5 to at
least 0.9; ``sign_flipped`` ends below its start; ``unmasked`` is caught by the mask count (retrieved tokens that
kept mask 1). JSON and a PNG (F1 and searches per question over the steps) in ``--out-dir``.

    python bench/learning.py [--steps 20] [--test-freq 5] [--seeds 1 2 3] [--warmup-seeds 0 1]
                             [--variants default sign_flipped unmasked]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from research_plugin.demo import policy as policies  # noqa: E402
from research_plugin.dynamics.training_logs import validation_means  # noqa: E402

RECIPES = REPO / "research_plugin" / "recipes"
VARIANTS = {
    "default": [],
    "sign_flipped": [
        f"reward.custom_reward_function.path={REPO / 'bench' / 'negated_reward.py'}",
        "reward.custom_reward_function.name=compute_score",
    ],
    "unmasked": ["+search_agent.mask_results=false"],
}
REPORTED = ("f1", "num_searches", "reward")
TARGETS = {"f1_rise": 0.25, "searches_start_max": 0.5, "searches_last_min": 0.9}


def job_command(variant: str, seed: int, steps: int, test_freq: int, out: Path, policy: Path | None, extra=()):
    """``main_ppo`` on the recipe for one run, writing under ``out`` (checkpoint at the last step only)."""
    return [
        sys.executable, "-m", "verl.trainer.main_ppo",
        "--config-path", str(RECIPES), "--config-name", "tiny_cpu_grpo", *VARIANTS[variant],
        f"trainer.total_training_steps={steps}", f"trainer.test_freq={test_freq}", f"trainer.save_freq={steps}",
        f"data.seed={seed}", f"actor_rollout_ref.rollout.seed={seed}",
        *([f"actor_rollout_ref.model.path={policy}"] if policy else []),
        f"trainer.default_local_dir={out}/run", f"hydra.run.dir={out}/hydra", *extra,
    ]  # fmt: skip


def read_run(metrics: Path) -> dict:
    """A finished run's validations (``{var: [[step, value], ...]}``) and its token counts over the training steps:
    what the rollout inserted (``retrieved``) and what had mask 0 (``masked``)."""
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    curves: dict[str, list[list[float]]] = {var: [] for var in REPORTED}
    tokens = {"retrieved": 0.0, "masked": 0.0}
    for line in lines:
        for kind in tokens:
            tokens[kind] += float(line["data"].get(f"search/{kind}_tokens/sum", 0.0))
        means = validation_means(line["data"])
        for var in REPORTED:
            if var in means:
                curves[var].append([line["step"], round(means[var], 4)])
    if not curves["f1"] or curves["f1"][0][0] != 0:
        raise RuntimeError(f"{metrics}: no step-0 validation")
    return {"validation": curves, "retrieved_tokens": int(tokens["retrieved"]), "masked_tokens": int(tokens["masked"])}


def run_job(variant: str, seed: int, steps: int, test_freq: int, policy: Path | None, extra=()) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-learning-{variant}-{seed}-") as tmp:
        cmd = job_command(variant, seed, steps, test_freq, Path(tmp), policy, extra)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        p = subprocess.run(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - start
        if p.returncode != 0:
            raise RuntimeError(f"{variant} seed {seed}: main_ppo failed:\n{p.stdout[-4000:]}")
        run = read_run(Path(tmp, "run", "metrics.jsonl"))
    return {"variant": variant, "seed": seed, "wall_s": round(wall, 1), **run}


def judge(run: dict) -> dict:
    """One run against :data:`TARGETS` (what its variant must show)."""
    f1, searches = (dict(map(tuple, run["validation"][v])) for v in ("f1", "num_searches"))
    first, last = min(f1), max(f1)
    out = {
        "f1": [f1[first], f1[last]],
        "searches": [searches.get(first), searches.get(last)],
        "f1_rise": round(f1[last] - f1[first], 4),
    }
    if run["variant"] == "default":
        ok = (
            out["f1_rise"] >= TARGETS["f1_rise"]
            and searches[first] <= TARGETS["searches_start_max"]
            and searches[last] >= TARGETS["searches_last_min"]
            and run["masked_tokens"] == run["retrieved_tokens"] > 0
        )
    elif run["variant"] == "sign_flipped":
        ok = f1[last] < f1[first]
    else:  # unmasked: the mask count must tell it from a masked run
        ok = run["masked_tokens"] != run["retrieved_tokens"]
    return {**out, "meets_target": ok}


def verdict(runs: list[dict]) -> dict:
    """Per warm-up seed and variant: each RL seed's judgement, and whether every seed meets the target."""
    out: dict = {}
    for r in runs:
        group = out.setdefault(f"warmup {r.get('warmup_seed', 0)}", {}).setdefault(r["variant"], {"per_seed": {}})
        group["per_seed"][r["seed"]] = judge(r)
    for by_variant in out.values():
        for group in by_variant.values():
            group["all_seeds_meet_target"] = all(j["meets_target"] for j in group["per_seed"].values())
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"default": "tab:blue", "sign_flipped": "tab:red", "unmasked": "tab:orange"}
    warmups = sorted({r.get("warmup_seed", 0) for r in runs})
    fig, axes = plt.subplots(2, len(warmups), figsize=(5.5 * len(warmups), 7), squeeze=False, sharey="row")
    for col, warmup in enumerate(warmups):
        for row, (var, label) in enumerate((("f1", "held-out answer F1"), ("num_searches", "searches / question"))):
            ax = axes[row][col]
            for variant in colours:
                for r in (r for r in runs if r.get("warmup_seed", 0) == warmup and r["variant"] == variant):
                    pts = r["validation"][var]
                    ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", ms=3, lw=1.2,
                            color=colours[variant], alpha=0.8,
                            label=variant if r["seed"] == min(x["seed"] for x in runs) else None)  # fmt: skip
            ax.set_title(f"{label} (warm-up seed {warmup}{', shipped' if warmup == 0 else ''})", fontsize=10)
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("tiny_cpu_grpo, fact world: greedy validation on the 80 held-out questions, a line per RL seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def warmup_policy(seed: int) -> Path | None:
    """The policy of a warm-up seed: the shipped one (None: the recipe's own) for seed 0, else rebuilt (cached)."""
    from research_plugin.demo.assets import cache_dir

    if seed == policies.SEED:
        if not policies.is_current():
            raise SystemExit("the shipped policy is not the code's: research-plugin policy build")
        return None
    out = cache_dir() / f"policy-seed{seed}-{policies.code_fingerprint()}"
    if not (out / "config.json").is_file():
        print(f"[learning] building the policy of warm-up seed {seed} in {out} ...", flush=True)
        policies.build_policy(out, seed=seed)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--test-freq", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="RL seeds")
    ap.add_argument("--warmup-seeds", type=int, nargs="+", default=[0, 1], help="0: the shipped policy")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--override", action="append", default=[], help="extra Hydra override for every run")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--name", default="learning")
    args = ap.parse_args(argv)

    runs, failed = [], []
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def write() -> dict:  # after every run: an interrupted bench keeps what it measured
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "cpu": policies.machine_cpu()},
            "settings": {k: v for k, v in vars(args).items() if k not in ("out_dir",)},
            "targets": TARGETS,
            "runs": runs,
            "failed": failed,
            "verdict": verdict(runs),
        }
        (args.out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    for warmup in args.warmup_seeds:
        policy = warmup_policy(warmup)
        for variant in args.variants:
            for seed in args.seeds:
                print(f"[learning] warm-up {warmup}, {variant}, seed {seed}: {args.steps} steps ...", flush=True)
                try:
                    run = run_job(variant, seed, args.steps, args.test_freq, policy, args.override)
                except RuntimeError as e:  # recorded; the other runs go on
                    print(f"[learning]   failed: {str(e)[-2000:]}", flush=True)
                    failed.append({"warmup_seed": warmup, "variant": variant, "seed": seed, "error": str(e)[-2000:]})
                    write()
                    continue
                run = {"warmup_seed": warmup, **run}
                print(f"[learning]   F1 {run['validation']['f1']}", flush=True)
                print(f"[learning]   searches {run['validation']['num_searches']}  ({run['wall_s']} s)", flush=True)
                runs.append(run)
                write()
    result = write()
    plot(runs, args.out_dir / f"{args.name}.png")
    print(json.dumps(result["verdict"], indent=2))
    return result


if __name__ == "__main__":
    main()
