"""``research-plugin guard``: replay a finished run's metrics through the guard's rules; exit 1 when one fired."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "guard",
        help="replay a finished run's metrics through the collapse guard's rules (exit 1 when one fired)",
        epilog="research-plugin guard checkpoints/research_plugin/tiny_cpu_grpo/metrics.jsonl --config guard.yaml",
    )
    p.add_argument("metrics", nargs="+", help="metrics.jsonl, verl console logs, tensorboard dirs, or run folders")
    p.add_argument("--config", help="YAML/JSON: a guard block (thresholds), or a recipe with one")
    p.add_argument("--max-searches", type=int, help="for search_pinned (default: the run's recorded setting)")
    p.add_argument("--all", action="store_true", help="every step a rule fired, not only the first")
    p.set_defaults(func=run)


def run(args) -> int:
    """Replay a finished run's metrics through the guard's rules; exit 1 when one fired."""
    import json
    from pathlib import Path

    from ..core.guard import GuardConfig, replay
    from ..core.settings import SettingsError, read_mapping_file
    from ..dynamics.training_logs import load_metrics

    try:
        block = {}
        if args.config:
            data = read_mapping_file(args.config)
            block = data["guard"] if "guard" in data else data  # a recipe, or a guard block alone
        config = GuardConfig.from_mapping(block, f"file {args.config}: guard" if args.config else "guard")
        metrics = load_metrics(args.metrics)
    except (OSError, SettingsError) as e:
        print(f"guard: {e}", file=sys.stderr)
        return 2
    max_searches = args.max_searches
    for log in args.metrics:  # the run's recorded search settings (research_plugin_run.json beside its metrics)
        run = Path(log) if Path(log).is_dir() else Path(log).parent
        if max_searches is None and (run / "research_plugin_run.json").is_file():
            recorded = json.loads((run / "research_plugin_run.json").read_text(encoding="utf-8"))
            max_searches = (recorded.get("search_agent") or {}).get("max_searches")
    if not metrics:
        print(f"guard: no metric series found in {', '.join(args.metrics)}", file=sys.stderr)
        return 2
    guard = replay(metrics, config, max_searches)
    alarms = guard.alarms if args.all else guard.first_alarms()
    for alarm in alarms:
        print(alarm.line())
    steps = sorted({s for xs in metrics.values() for s in xs})
    skipped = "" if guard.max_searches else " (search_pinned skipped: max_searches unknown, pass --max-searches)"
    print(
        f"guard: {len(guard.first_alarms())} rule(s) fired over steps {steps[0]}-{steps[-1]} "
        f"({len(guard.rules)} rules){skipped}"
    )
    return 1 if guard.alarms else 0
