"""The guard's rules (research_plugin.core.guard) on metric series shaped like the reported collapses: each literal
case says which rule must fire at which step, or that none may."""

from __future__ import annotations

import json

import pytest

from research_plugin.core.guard import Guard, GuardConfig, observations, replay
from research_plugin.core.settings import SettingsError

KEYS = {
    "reward": "critic/score/mean",
    "f1": "search/f1/mean",
    "format": "search/format/mean",
    "searches": "search/num_searches/mean",
    "failed": "search/num_failed_searches/mean",
    "truncated": "search/truncated/mean",
    "entropy": "actor/entropy",
}

# the default recipe's first 10 training steps as measured (tests/main_job.py's run, RL seed 1): it learns
DEFAULT_RUN = {
    "reward": [0.24, 0.35, 0.31, 0.47, 0.56, 0.49, 0.48, 0.52, 0.62, 0.35],
    "f1": [0.16, 0.28, 0.23, 0.42, 0.52, 0.44, 0.42, 0.47, 0.58, 0.28],
    "format": [1.0, 1.0, 1.0, 1.0, 1.0, 0.98, 1.0, 1.0, 1.0, 0.98],
    "searches": [0.44, 0.59, 0.81, 0.75, 0.91, 0.95, 0.97, 0.97, 0.98, 0.97],
    "failed": [0.0] * 10,
    "truncated": [0.0, 0.0, 0.0, 0.0, 0.02, 0.0, 0.0, 0.0, 0.0, 0.0],
    "entropy": [0.2, 0.16, 0.1, 0.11, 0.07, 0.06, 0.05, 0.05, 0.04, 0.08],
}


def series(**signals: list[float]) -> dict[str, dict[int, float]]:
    """``{verl key: {step: value}}`` from lists starting at step 1."""
    return {KEYS[s]: {i + 1: v for i, v in enumerate(xs)} for s, xs in signals.items()}


def fired(guard: Guard) -> list[tuple[str, int]]:
    """The first alarm of each rule: (rule, step)."""
    return [(a.rule, a.step) for a in guard.first_alarms()]


def test_the_default_run_raises_no_alarm():
    assert fired(replay(series(**DEFAULT_RUN), max_searches=4)) == []


@pytest.mark.parametrize(
    "signals, max_searches, expected",
    [
        # format falls from 1.0: windows of 2 are 1, 1, .95, .75 -> .25 below the best at step 5
        ({"format": [1.0, 1.0, 1.0, 0.9, 0.6, 0.4]}, None, [("format_fall", 5)]),
        # a wobble of the format rate (min .9) is no fall
        ({"format": [1.0, 0.9, 1.0, 0.9, 1.0, 0.9]}, None, []),
        # searches collapse to 0 after reaching .8
        ({"searches": [0.4, 0.6, 0.8, 0.3, 0.0, 0.0]}, None, [("search_collapse", 6)]),
        # a policy that never searched has not collapsed
        ({"searches": [0.0, 0.02, 0.0, 0.0, 0.0]}, None, []),
        # searches run into max_searches=4 every time
        ({"searches": [2.0, 3.0, 4.0, 4.0, 4.0]}, 4, [("search_pinned", 4)]),
        # ... and without a known max_searches the rule cannot tell
        ({"searches": [2.0, 3.0, 4.0, 4.0, 4.0]}, None, []),
        # most responses truncated
        ({"truncated": [0.1, 0.3, 0.6, 0.8]}, None, [("truncation", 4)]),
        ({"truncated": [0.1, 0.3, 0.4, 0.5]}, None, []),
        # entropy collapse to under 5% of its start (.2)
        ({"entropy": [0.2, 0.2, 0.1, 0.05, 0.01, 0.005]}, None, [("entropy_collapse", 6)]),
        # entropy explosion to over 3x its start
        ({"entropy": [0.2, 0.2, 0.4, 0.8, 1.0]}, None, [("entropy_explosion", 5)]),
    ],
)
def test_each_rule_fires_on_its_shape(signals, max_searches, expected):
    assert fired(replay(series(**signals), max_searches=max_searches)) == expected


def test_reward_rising_while_f1_falls_is_reward_hacking():
    # F1 windows .4, .35, .2: half its best at step 4, while the reward went from .25 (step 2) to .45
    guard = replay(series(reward=[0.2, 0.3, 0.4, 0.5, 0.6], f1=[0.4, 0.4, 0.3, 0.1, 0.1]))
    assert fired(guard) == [("reward_hacking", 4)]
    alarm = guard.first_alarms()[0]
    assert alarm.evidence == {"reward": 0.45, "reward_then": 0.25, "f1": 0.2, "best": 0.4, "best_step": 2}
    assert "reward rose from 0.250 to 0.450 while f1 fell from 0.40 (step 2) to 0.20" in alarm.message


def test_reward_rising_while_format_falls_is_reward_hacking():
    # a garbled call that still earns reward (DeepResearch 96): format falls, the reward climbs
    # format windows 1, .85, .65 (.35 below its best at step 4) while the reward went from .2 to .45
    shape = series(reward=[0.2, 0.2, 0.4, 0.5], format=[1.0, 1.0, 0.7, 0.6])
    guard = replay(shape, GuardConfig(rules={"format_fall": {"enabled": False}}))
    assert fired(guard) == [("reward_hacking", 4)]


def test_reward_and_f1_falling_together_is_no_hacking():
    assert fired(replay(series(reward=[0.6, 0.6, 0.3, 0.1], f1=[0.5, 0.5, 0.2, 0.05]))) == []


def test_the_sign_flipped_control_is_caught_by_step_3_with_its_cause():
    # bench/learning.py's sign_flipped shape: the negated reward climbs to 0 as F1 and searches fall to 0 by step 2
    signals = dict(reward=[-0.24, -0.05, 0.0, 0.0, 0.0], f1=[0.16, 0.02, 0.0, 0.0, 0.0],
                   searches=[0.44, 0.1, 0.0, 0.0, 0.0], format=[1.0] * 5)  # fmt: skip
    alarms = fired(replay(series(**signals)))
    assert ("reward_hacking", 3) in alarms
    assert alarms[0][1] <= 3


def test_a_retriever_outage_is_blamed_on_the_retriever_not_the_policy():
    # the retriever fails from step 3: F1, reward and (confused by the notices) format fall with it
    signals = dict(searches=[1.0] * 6, failed=[0.0, 0.0, 0.8, 1.0, 1.0, 1.0], f1=[0.5, 0.5, 0.1, 0.0, 0.0, 0.0],
                   reward=[0.5, 0.5, 0.1, 0.0, 0.0, 0.0], format=[1.0, 1.0, 0.6, 0.5, 0.5, 0.5])  # fmt: skip
    guard = replay(series(**signals))
    assert {a.rule for a in guard.alarms} == {"retriever_failures"}
    assert fired(guard) == [("retriever_failures", 3)]
    explained = [a.evidence.get("explains") for a in guard.alarms]
    assert ["format_fall"] in explained
    assert "the retriever, not the policy" in guard.alarms[0].message


def test_a_few_failed_searches_are_no_outage():
    assert fired(replay(series(searches=[1.0] * 4, failed=[0.1, 0.0, 0.1, 0.1]))) == []


def test_validations_are_watched_too():
    # held-out F1 of the sign-flipped control (bench/results/learning.json, seed 1) at steps 0 and 5
    val = {
        "val-core/fact_world/reward/mean@1": {0: -0.5613, 5: -0.0788},
        "val-aux/fact_world/f1/mean@1": {0: 0.5125, 5: 0.025},
    }
    guard = replay(val)
    assert [(a.rule, a.stream, a.step) for a in guard.alarms] == [("reward_hacking", "val", 5)]


def test_observations_pick_the_first_key_present_and_average_benchmarks():
    obs = observations({
        "critic/score/mean": 0.5, "search/score/mean": 0.4, "response_length/clip_ratio": 0.3,
        "val-aux/a/f1/mean@1": 0.2, "val-aux/b/f1/mean@4": 0.4, "timing_s/gen": "n/a",
    })  # fmt: skip
    assert obs == {"train": {"reward": 0.5, "truncated": 0.3}, "val": {"f1": pytest.approx(0.3)}}


def test_openrlhfs_logged_keys_are_read_too():
    # OpenRLHF logs the agent's extra_logs as train/<key> (research_plugin.openrlhf.agent): searches collapse
    logs = {"train/num_searches": {1: 0.6, 2: 0.6, 3: 0.0, 4: 0.0}, "train/score": {1: 0.3, 2: 0.3, 3: 0.1, 4: 0.1}}
    assert fired(replay(logs)) == [("search_collapse", 4)]


def test_thresholds_can_be_overridden_and_rules_switched_off():
    shape = series(truncated=[0.1, 0.3, 0.4, 0.5])
    lower = GuardConfig.from_mapping({"rules": {"truncation": {"above": 0.4}}})
    assert fired(replay(shape, lower)) == [("truncation", 4)]
    off = GuardConfig.from_mapping({"rules": {"truncation": {"enabled": False}}})
    assert fired(replay(series(truncated=[0.9] * 4), off)) == []
    one_step = GuardConfig.from_mapping({"window": 1})
    assert fired(replay(series(format=[1.0, 1.0, 0.6]), one_step)) == [("format_fall", 3)]


def test_step_metrics_and_log_lines_only_when_a_rule_starts_firing():
    guard = Guard()
    lines = []
    for step, value in enumerate([0.1, 0.3, 0.8, 0.9, 0.9], start=1):
        now = guard.observe(step, {"search/truncated/mean": value})
        lines += [a.line() for a in guard.new(now)]
        metrics = guard.step_metrics(now)
    assert metrics["guard/truncation"] == 1.0 and metrics["guard/format_fall"] == 0.0 and metrics["guard/alarms"] == 1
    assert len(lines) == 1 and lines[0].startswith("guard: truncation at step 3 (train): 55% of responses truncated")


@pytest.mark.parametrize(
    "block, message",
    [
        ({"acton": "stop"}, "guard: unknown guard settings 'acton' (did you mean 'action'?)"),
        ({"action": "halt"}, "guard: unknown action 'halt'"),
        ({"window": 0}, "guard: window out of range: must be >= 1, not 0"),
        ({"rules": {"format_fal": {}}}, "guard: rules: unknown guard rule 'format_fal' (did you mean 'format_fall'?)"),
        ({"rules": {"format_fall": {"dorp": 0.3}}}, "rules.format_fall: unknown setting 'dorp' (did you mean 'drop'?)"),
        ({"rules": {"truncation": {"above": "lots"}}}, "rules.truncation: above must be a finite number, not 'lots'"),
        ({"rollback_overrides": 3}, "guard: rollback_overrides: must be a mapping of settings, not 3"),
    ],
)
def test_bad_guard_settings_are_errors_naming_them(block, message):
    with pytest.raises(SettingsError) as e:
        GuardConfig.from_mapping(block, "guard")
    assert message in str(e.value)


# --- replaying a finished run: `research-plugin guard` and the plots ------------------------------------------------


def write_metrics(path, signals, max_searches=None):
    steps = series(**signals)
    lines = [
        {"step": s, "data": {k: xs[s] for k, xs in steps.items() if s in xs}} for s in sorted(steps[KEYS["reward"]])
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    if max_searches is not None:
        (path.parent / "research_plugin_run.json").write_text(json.dumps({"search_agent": {"max_searches": 4}}))
    return path


SIGN_FLIPPED = dict(reward=[-0.24, -0.05, 0.0, 0.0, 0.0], f1=[0.16, 0.02, 0.0, 0.0, 0.0],
                    searches=[0.44, 0.1, 0.0, 0.0, 0.0], format=[1.0] * 5)  # fmt: skip


def test_the_guard_command_replays_a_run(tmp_path, capsys):
    from research_plugin.cli import main

    metrics = write_metrics(tmp_path / "metrics.jsonl", SIGN_FLIPPED)
    assert main(["guard", str(metrics)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(
        "guard: reward_hacking at step 3 (train): reward rose from -0.145 to -0.025 while f1 fell from 0.09 (step 2) "
        "to 0.01: the policy is optimising something other than answers"
    )
    assert out[-1] == (
        "guard: 2 rule(s) fired over steps 1-5 (8 rules) (search_pinned skipped: max_searches unknown, pass "
        "--max-searches)"
    )
    assert any(x.startswith("guard: search_collapse at step 4 (train)") for x in out)
    # thresholds from a file: a search collapse only below .0 never fires; F1 halving is still reward hacking
    (tmp_path / "guard.yaml").write_text("guard:\n  rules:\n    search_collapse: {enabled: false}\n")
    assert main(["guard", str(metrics), "--config", str(tmp_path / "guard.yaml")]) == 1
    assert "search_collapse" not in capsys.readouterr().out


def test_the_guard_command_on_the_default_run_reads_max_searches_from_the_run(tmp_path, capsys):
    from research_plugin.cli import main

    metrics = write_metrics(tmp_path / "metrics.jsonl", DEFAULT_RUN, max_searches=4)
    assert main(["guard", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "guard: 0 rule(s) fired over steps 1-10 (8 rules)\n"
    (tmp_path / "bad.yaml").write_text("guard: {rules: {truncaton: {}}}\n")
    assert main(["guard", str(metrics), "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown guard rule 'truncaton' (did you mean 'truncation'?)" in capsys.readouterr().err


def test_plots_mark_the_alarms(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from research_plugin.dynamics.plots import plot_training

    metrics = write_metrics(tmp_path / "metrics.jsonl", SIGN_FLIPPED)
    drawn = plot_training([metrics], tmp_path / "plots")
    out = capsys.readouterr().out
    assert (
        "plot: guard alarm at step 3: reward_hacking" in out and "plot: guard alarm at step 4: search_collapse" in out
    )
    assert set(drawn) == {"reward", "searches"} and (tmp_path / "plots" / "reward.png").is_file()


def test_the_learning_benchmarks_validations_default_quiet_sign_flipped_caught_in_time():
    """bench/results/learning.json's held-out curves (every 5 steps): no alarm on a default run; on a sign-flipped
    run an alarm by the validation where F1 first drops below half its start, naming reward hacking."""
    from pathlib import Path

    results = json.loads((Path(__file__).parents[1] / "bench" / "results" / "learning.json").read_text())
    names = {
        v: f"val-{'core' if v == 'reward' else 'aux'}/fact_world/{v}/mean@1" for v in ("reward", "f1", "num_searches")
    }
    checked = set()
    for run in results["runs"]:
        curves = {names[v]: dict(map(tuple, points)) for v, points in run["validation"].items()}
        guard = replay(curves, max_searches=4)
        if run["variant"] == "default":
            assert guard.alarms == [], run["seed"]
        elif run["variant"] == "sign_flipped":
            f1 = curves[names["f1"]]
            halved = min(s for s in sorted(f1) if f1[s] < f1[0] / 2)
            first = guard.first_alarms()[0]
            assert (first.rule, first.stream) == ("reward_hacking", "val") and first.step <= halved, run["seed"]
        checked.add(run["variant"])
    assert {"default", "sign_flipped"} <= checked
