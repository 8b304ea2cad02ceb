"""``research-plugin plot`` on a recorded run: logs written by verl's own trackers (console, file, tensorboard),
parsed back to the values logged, drawn as PNGs; missing series are skipped with a message."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from research_plugin.dynamics.plots import PANELS, panel_curves, plot_training
from research_plugin.dynamics.training_logs import load_metrics, parse_console

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def recorded_run() -> dict[int, dict]:
    """What a trainer logs: validation before training (step 0), five training steps, validation at 3 and 5."""
    steps: dict[int, dict] = {}

    def val(step):
        return {
            "val-core/hotpotqa/reward/mean@1": np.float64(0.1 + 0.05 * step),
            "val-aux/hotpotqa/num_searches/mean@1": np.float64(1.0 + 0.25 * step),
            "val-core/musique/reward/mean@1": np.float64(0.05 + 0.04 * step),
            "val-aux/musique/num_searches/mean@1": np.float64(0.5 + 0.5 * step),
            "val-aux/num_turns/mean": np.float64(3.0),
        }

    steps[0] = val(0)
    for step in range(1, 6):
        steps[step] = {
            "critic/score/mean": np.float32(0.1 * step),
            "response_length/mean": 200.0 + 10 * step,
            "search/num_searches/mean": np.float64(0.5 * step),
            "search/num_searches/max": 4,
            "timing_s/step": np.float64(12.5),
            "training/global_step": step,
            **(val(step) if step in (3, 5) else {}),
        }
    return steps


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """The run logged through verl's ``Tracking`` with the console, file and tensorboard backends."""
    import contextlib
    import io
    import os

    from verl.utils.tracking import Tracking

    d = tmp_path_factory.mktemp("run")
    env = {"VERL_FILE_LOGGER_PATH": str(d / "metrics.jsonl"), "TENSORBOARD_DIR": str(d / "tb")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console):
            tracker = Tracking("proj", "exp", default_backend=["console", "file", "tensorboard"])
            for step, data in recorded_run().items():
                tracker.log(data=data, step=step)
            tracker.finish()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    # as it reaches a log file from a Ray job: actor prefixes, colour codes, other output in between
    lines = ["2025-01-01 00:00:00 INFO starting", "\x1b[36m(TaskRunner pid=4242)\x1b[0m Training Progress: 20%"]
    lines += [f"\x1b[36m(TaskRunner pid=4242)\x1b[0m {line}" for line in console.getvalue().splitlines()]
    (d / "console").mkdir()
    (d / "console" / "train.log").write_text("\n".join(lines) + "\n")
    return d


def expected() -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    for step, data in recorded_run().items():
        for key, value in data.items():
            series.setdefault(key, {})[step] = float(value)
    return series


@pytest.mark.parametrize("source", ["console/train.log", "metrics.jsonl", "tb"])
def test_each_log_format_gives_back_the_logged_values(logs, source):
    parsed = load_metrics([logs / source])
    want = expected()
    assert set(parsed) == set(want)
    for key, series in want.items():
        assert parsed[key] == pytest.approx(series, rel=1e-6), key


def test_console_lines_with_numpy_reprs_and_noise():
    lines = [
        "(TaskRunner pid=1) step:7 - critic/score/mean:np.float32(0.25) - response_length/mean:312.5 - flag:True",
        "step:8 - critic/score/mean:nan - odd:np.float64(-1e-05) - text:not a number",
        "epoch 3 step: none here",
        "step:9",
    ]
    parsed = parse_console(lines)
    assert parsed["critic/score/mean"][7] == 0.25 and np.isnan(parsed["critic/score/mean"][8])
    assert parsed["response_length/mean"] == {7: 312.5} and parsed["flag"] == {7: 1.0}
    assert parsed["odd"] == {8: -1e-05} and "text" not in parsed


def test_plots_from_a_run_folder(logs, tmp_path, capsys):
    drawn = plot_training([logs], tmp_path / "plots")
    assert set(drawn) == {p.name for p in PANELS}
    for name in drawn:
        png = (tmp_path / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
    want = expected()
    reward = drawn["reward"]
    assert set(reward) == {"train", "val/hotpotqa", "val/musique"}
    assert reward["train"] == pytest.approx(want["critic/score/mean"])
    assert reward["val/musique"] == pytest.approx({0: 0.05, 3: 0.17, 5: 0.25})
    assert drawn["searches"]["val/hotpotqa"] == pytest.approx({0: 1.0, 3: 1.75, 5: 2.25})
    assert drawn["searches"]["train"] == pytest.approx({s: 0.5 * s for s in range(1, 6)})
    assert drawn["response_length"] == {"train": pytest.approx({s: 200.0 + 10 * s for s in range(1, 6)})}
    assert "wrote" in capsys.readouterr().out


def test_missing_series_are_skipped_with_a_message(tmp_path, capsys):
    log = tmp_path / "short.log"
    log.write_text("step:1 - critic/score/mean:0.5 - val-core/nq/reward/mean@4:0.25\nstep:2 - critic/score/mean:0.75\n")
    drawn = plot_training([log], tmp_path / "plots")
    assert drawn == {"reward": {"train": {1: 0.5, 2: 0.75}, "val/nq": {1: 0.25}}}
    out = capsys.readouterr().out
    assert "skipped response_length" in out and "skipped searches" in out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["reward.png"]


def test_validation_picks_the_largest_n_and_prefers_reward():
    metrics = {
        "val-aux/nq/score/mean@4": {1: 0.9},
        "val-core/nq/reward/mean@2": {1: 0.1},
        "val-core/nq/reward/mean@16": {1: 0.3},
        "val-aux/tq/score/mean@1": {1: 0.7},
    }
    reward = next(p for p in PANELS if p.name == "reward")
    assert panel_curves(metrics, reward) == {"val/nq": {1: 0.3}, "val/tq": {1: 0.7}}


def test_cli_plot(logs, tmp_path):
    def plot(*args):
        return subprocess.run(
            [sys.executable, "-m", "research_plugin.cli", "plot", *args], capture_output=True, text=True, timeout=300
        )

    ok = plot("--log", str(logs / "metrics.jsonl"), "--out", str(tmp_path / "a"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["response_length.png", "reward.png", "searches.png"]
    (tmp_path / "empty.log").write_text("nothing logged here\n")
    empty = plot("--log", str(tmp_path / "empty.log"), "--out", str(tmp_path / "b"))
    assert empty.returncode == 1 and "no metric series found" in empty.stdout
    missing = plot("--log", str(tmp_path / "nope"), "--out", str(tmp_path / "c"))
    assert missing.returncode == 2 and "no such log file or folder" in missing.stderr
