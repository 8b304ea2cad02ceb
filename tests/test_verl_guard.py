"""The guard in verl's trainer (research_plugin.verl.guard): the ``guard`` block checked at start-up, what the trainer
modes do on an alarm (warn, stop, rollback), and the launcher's handling of a stop and a rollback. The trainer-loop
tests drive the mixin over a stand-in for verl's ``fit`` loop (each case in seconds); the last test runs verl's own
launcher and trainer on the sign-flipped control with ``stop``."""

from __future__ import annotations

import json
import re

import pytest
from omegaconf import OmegaConf

from research_plugin.core.settings import SettingsError
from research_plugin.verl import guard as verl_guard
from research_plugin.verl.guard import GuardMixin, GuardRollback, GuardStop, checkpoint_before, guarded

from .recipe_config import compose_recipe as compose

LR = "actor_rollout_ref.actor.optim.lr"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["+guard.acton=stop"], r"guard: unknown guard settings 'acton' \(did you mean 'action'\?\)"),
        (["+guard.rules.truncation.abov=0.3"], r"guard: rules.truncation: unknown setting 'abov' \(did you mean"),
        (["guard.action=rollback"], r"guard: action rollback needs rollback_overrides"),
        (
            ["guard.action=rollback", f"+guard.rollback_overrides.{LR}r=1e-4"],
            rf"guard: rollback_overrides: '{LR}r' is not a setting of this config",
        ),
        (
            ["guard.action=rollback", f"+guard.rollback_overrides.{LR}=1e-4", "trainer.save_freq=-1"],
            r"guard: action rollback needs checkpoints to roll back to \(trainer.save_freq > 0\)",
        ),
    ],
)
def test_the_start_up_check_names_a_bad_guard_setting(overrides, message):
    from research_plugin.verl.config_check import check_config

    with pytest.raises(SettingsError, match=r"^verl config \(recipe / command line\): " + message):
        check_config(compose("tiny_cpu_grpo", overrides))


def test_a_good_rollback_block_passes_the_start_up_check():
    from research_plugin.verl.config_check import check_config

    check_config(compose("tiny_cpu_grpo", ["guard.action=rollback", f"+guard.rollback_overrides.{LR}=1e-4"]))


# --- the trainer mixin over a stand-in of verl's fit loop -----------------------------------------------------------


class LoopLikeVerls:
    """The calls verl 0.9.1's ``PPOTrainerBase.fit`` makes, in its order (trainer/ppo/v1/trainer_base.py ~l.412):
    validate before training, ``on_train_begin``, then per step ``on_step_begin``, the update, a checkpoint every
    ``save_freq`` steps, ``_compute_metrics`` on the step's metrics; each step's metrics come from ``steps``."""

    def __init__(self, config, steps):
        self.config, self.steps, self.global_steps, self.saved, self.logged = config, steps, 0, [], []

    def _validate(self):
        return {"val-aux/w/f1/mean@1": 0.5, "val-core/w/reward/mean@1": 0.5}

    def on_train_begin(self):
        pass

    def on_step_begin(self):
        pass

    def _save_checkpoint(self):
        (self.root / f"global_step_{self.global_steps}" / "actor").mkdir(parents=True, exist_ok=True)
        self.saved.append(self.global_steps)

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        pass

    @property
    def root(self):
        from pathlib import Path

        return Path(self.config.trainer.default_local_dir)

    def fit(self):
        self._validate()
        self.on_train_begin()
        self.global_steps += 1  # from 0, or from a resumed checkpoint's step
        while self.global_steps <= len(self.steps):
            self.on_step_begin()
            if self.global_steps % self.config.trainer.save_freq == 0:
                self._save_checkpoint()
            metrics = dict(self.steps[self.global_steps - 1])
            self._compute_metrics(None, metrics, {}, self.global_steps, 0)
            self.logged.append((self.global_steps, metrics))
            self.global_steps += 1


class Trainer(GuardMixin, LoopLikeVerls):
    pass


# searches per trajectory collapse from .8 to 0 at steps 4-5: search_collapse fires at step 5 (windows of 2)
COLLAPSE = [{"search/num_searches/mean": x} for x in (0.8, 0.8, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0)]


def trainer(tmp_path, steps=COLLAPSE, **guard):
    config = OmegaConf.create(
        {"guard": guard, "search_agent": {"max_searches": 4},
         "trainer": {"default_local_dir": str(tmp_path), "save_freq": 2, "resume_mode": "disable"}}
    )  # fmt: skip
    return Trainer(config, steps)


def test_warn_logs_the_alarm_and_a_guard_metric_and_goes_on(tmp_path, capsys):
    t = trainer(tmp_path, action="warn")
    t.fit()
    assert len(t.logged) == 8
    assert [m["guard/search_collapse"] for _, m in t.logged] == [0, 0, 0, 0, 1, 1, 1, 1]
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("guard:")]
    assert lines == [
        "guard: search_collapse at step 5 (train): searches per trajectory collapsed to 0.00 from 0.80 (step 2): "
        "the policy stopped searching and answers from memory"
    ]
    record = json.loads((tmp_path / "guard.json").read_text())
    assert [a["rule"] for a in record["alarms"]] == ["search_collapse"] and record["stopped"] is None


def test_stop_saves_and_ends_before_the_next_step_with_the_reason(tmp_path):
    t = trainer(tmp_path, action="stop")
    with pytest.raises(GuardStop, match=r"^guard stopped the run at step 5: search_collapse at step 5 \(train\)"):
        t.fit()
    assert [s for s, _ in t.logged] == [1, 2, 3, 4, 5]  # step 5 logged, step 6 never ran
    assert t.saved == [2, 4, 5]  # the checkpoint of the stop
    assert json.loads((tmp_path / "guard.json").read_text())["stopped"]["step"] == 5


def test_rollback_names_the_checkpoint_before_the_alarm(tmp_path):
    t = trainer(
        tmp_path, action="rollback", rollback_overrides={"actor_rollout_ref": {"actor": {"optim": {"lr": 1e-4}}}}
    )
    with pytest.raises(GuardRollback) as e:
        t.fit()
    # the alarm's window averaged steps 4 and 5 (searches .0 at 4): the checkpoint before them, step 2
    assert e.value.checkpoint == str(tmp_path / "global_step_2")
    assert t.saved == [2, 4]  # no checkpoint of the collapsed step
    (rollback,) = json.loads((tmp_path / "guard.json").read_text())["rollbacks"]
    assert rollback["alarm_step"] == 5 and rollback["resumed_step"] == 2
    assert rollback["overrides"] == {"actor_rollout_ref": {"actor": {"optim": {"lr": 1e-4}}}}


def test_a_resumed_attempt_keeps_the_metrics_and_stops_when_rollbacks_are_used_up(tmp_path):
    overrides = {"actor_rollout_ref": {"actor": {"optim": {"lr": 1e-4}}}}
    first = trainer(tmp_path, action="rollback", rollback_overrides=overrides)
    with pytest.raises(GuardRollback) as e:
        first.fit()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "data": m}) + "\n" for s, m in first.logged))
    # the launcher resumes from global_step_2; the collapse comes again (steps 3-8 of COLLAPSE)
    second = trainer(tmp_path, action="rollback", rollback_overrides=overrides, max_rollbacks=1)
    second.config.trainer.resume_mode, second.config.trainer.resume_from_path = "resume_path", e.value.checkpoint
    second.global_steps = 2  # verl's _load_checkpoint sets it from the folder's name
    with pytest.raises(GuardStop, match=r"^guard stopped the run at step 5: .*guard.max_rollbacks \(1\) used up"):
        second.fit()
    assert [s for s, _ in second.logged] == [3, 4, 5]
    assert [s for s, _ in second._report_prior] == [1, 2]  # the run's metrics.jsonl keeps steps 1-2


def test_an_outage_under_rollback_stops_instead_a_rollback_cannot_fix_a_retriever(tmp_path):
    outage = [{"search/num_searches/mean": 1.0, "search/num_failed_searches/mean": x} for x in (0, 0, 0, 1, 1, 1)]
    t = trainer(tmp_path, outage, action="rollback", rollback_overrides={"trainer": {"save_freq": 1}})
    with pytest.raises(GuardStop, match=r"retriever_failures at step 4 .*no rollback: the retriever is failing"):
        t.fit()


def test_checkpoint_before_takes_the_newest_earlier_actor_checkpoint(tmp_path):
    for k in (2, 4, 6):
        (tmp_path / f"global_step_{k}" / "actor").mkdir(parents=True)
    (tmp_path / "global_step_5").mkdir()  # no actor: not a checkpoint
    assert checkpoint_before(tmp_path, 6) == tmp_path / "global_step_4"
    assert checkpoint_before(tmp_path, 2) is None


# --- the launcher ---------------------------------------------------------------------------------------------------


def ray_wrapped(error: Exception) -> Exception:
    """What ``ray.get`` raises for an exception in a remote task."""
    from ray.exceptions import RayTaskError

    return RayTaskError("TaskRunnerV1.run", "Traceback ...", error).as_instanceof_cause()


def test_the_launcher_starts_again_from_the_checkpoint_with_the_overrides(monkeypatch, tmp_path):
    import ray

    monkeypatch.setattr(ray, "shutdown", lambda: None)
    config = compose("tiny_cpu_grpo", ["guard.action=rollback", f"+guard.rollback_overrides.{LR}=1e-4",
                                       "trainer.save_freq=2"])  # fmt: skip
    calls = []

    def run_ppo(cfg, task_runner_class=None):
        calls.append((cfg.trainer.resume_mode, cfg.trainer.get("resume_from_path"), OmegaConf.select(cfg, LR)))
        if len(calls) == 1:
            raise ray_wrapped(GuardRollback("guard: rollback to step 4: ...", str(tmp_path / "global_step_4")))

    guarded(run_ppo)(config, task_runner_class=object)
    assert calls == [("disable", None, 1e-3), ("resume_path", str(tmp_path / "global_step_4"), 1e-4)]


def test_the_launcher_exits_3_with_the_reason_on_a_stop(monkeypatch, capsys):
    import ray

    monkeypatch.setattr(ray, "shutdown", lambda: None)
    config = compose("tiny_cpu_grpo", ["guard.action=stop"])

    def run_ppo(cfg, task_runner_class=None):
        raise ray_wrapped(GuardStop("guard stopped the run at step 3: reward_hacking at step 3 (train): ..."))

    with pytest.raises(SystemExit) as e:
        guarded(run_ppo)(config)
    assert e.value.code == verl_guard.EXIT_STATUS == 3
    assert re.search(r"^guard stopped the run at step 3: reward_hacking", capsys.readouterr().err, re.M)


def test_other_errors_pass_through_the_launcher():
    def run_ppo(cfg):
        raise ValueError("not ours")

    with pytest.raises(ValueError, match="not ours"):
        guarded(run_ppo)(compose("tiny_cpu_grpo"))


def test_install_wraps_the_launchers_run_ppo(monkeypatch):
    """``python -m verl.trainer.main_ppo`` runs the launcher as ``__main__``: its ``run_ppo`` is wrapped once."""
    import sys
    import types

    launcher = types.ModuleType("__main__")
    launcher.run_ppo, launcher.TaskRunnerV1 = (lambda config, task_runner_class=None: "ran"), object
    monkeypatch.setitem(sys.modules, "__main__", launcher)
    verl_guard.install()
    verl_guard.install()
    assert launcher.run_ppo._research_plugin_guard and launcher.run_ppo.__wrapped__.__name__ == "<lambda>"
    assert launcher.run_ppo(compose("tiny_cpu_grpo")) == "ran"


# --- verl's own launcher and trainer ---------------------------------------------------------------------------------


def test_verls_launcher_stops_the_sign_flipped_control_with_the_rule_that_names_it(tmp_path):
    """The benchmark's sign-flipped control (GRPO's advantage negated: F1 and searches fall to 0 within two steps)
    through ``python -m verl.trainer.main_ppo`` with ``guard.action=stop``: the guard raises an alarm by the first
    validation after the fall, the launcher exits 3 with the reason, and ``guard.json`` records the stop."""
    import os
    import subprocess

    from .main_job import load_bench

    cmd = load_bench("learning").job_command("sign_flipped", 1, 6, 2, tmp_path, None, ["guard.action=stop"])
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == verl_guard.EXIT_STATUS, log[-4000:]
    stopped = json.loads((tmp_path / "run" / verl_guard.GUARD_FILE).read_text())["stopped"]
    assert stopped["step"] <= 4, stopped  # F1 is 0 at the step-2 validation in every benchmark seed
    assert f"guard stopped the run at step {stopped['step']}" in log
    assert re.search(r"(reward_hacking|search_collapse|format_fall) at step", stopped["reason"]), stopped
    assert (tmp_path / "run" / f"global_step_{stopped['step']}" / "actor").is_dir()  # saved at the stop
