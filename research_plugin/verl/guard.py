"""The guard (:mod:`research_plugin.core.guard`) in verl's trainer: watch every step, and warn, stop or roll back.

The plugin's trainer modes (:mod:`.trainer_modes`) feed each step's metrics (and the validation before training)
to a :class:`~research_plugin.core.guard.Guard` built from the config's ``guard`` block (checked at start-up by
:mod:`.config_check`; no block: ``action: warn`` with the default thresholds). Each step gets ``guard/<rule>``
metrics (1 while the rule fires) and ``guard/alarms``; a rule that starts firing prints its line. On an alarm:

- ``warn``: nothing more; the run's summary lists the first alarm of each rule;
- ``stop``: the step is logged, a checkpoint saved, and the run ends (before the next step) with the reason and
  exit status :data:`EXIT_STATUS`;
- ``rollback``: the run ends there too, and the launcher (``main_ppo``'s ``run_ppo``, wrapped by :func:`install`)
  starts it again from the last checkpoint taken before the alarm (before the steps its window averaged, when
  there is one; ``trainer.resume_mode=resume_path``) with
  ``guard.rollback_overrides`` applied (e.g. a lower learning rate), at most ``guard.max_rollbacks`` times; then it
  stops. A run needs checkpoints to roll back to (``trainer.save_freq``). An alarm blamed on the retriever stops
  instead: a rollback cannot fix a retriever.

``guard.json`` in ``trainer.default_local_dir`` records the alarms, the rollbacks and the stop. A resumed attempt
keeps the run's ``metrics.jsonl`` up to its checkpoint, so the file stays one history, but its guard starts afresh
from the checkpoint: the changed setting may change what the metrics mean (a reward with its sign restored jumps).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.guard import Alarm, Guard, GuardConfig, summary_lines

logger = logging.getLogger(__name__)

GUARD_FILE = "guard.json"
EXIT_STATUS = 3
"""The launcher's exit status when the guard ended the run."""


class GuardSignal(RuntimeError):
    """Raised in the trainer to end the run; the launcher turns it into a message and :data:`EXIT_STATUS`."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GuardStop(GuardSignal):
    pass


class GuardRollback(GuardSignal):
    """``args``: (reason, checkpoint folder to resume from)."""

    @property
    def checkpoint(self) -> str:
        return self.args[1]


def guard_config(config: Any) -> GuardConfig:
    from .config_check import COMMAND_LINE

    return GuardConfig.from_mapping(config.get("guard"), where=f"{COMMAND_LINE}: guard")


def flatten(overrides: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def checkpoint_before(root: str | Path, step: int) -> Path | None:
    """The newest ``global_step_K`` folder under ``root`` with K < ``step`` and an actor checkpoint."""
    found = [
        (int(p.name.rsplit("_", 1)[-1]), p)
        for p in Path(root).glob("global_step_*")
        if p.name.rsplit("_", 1)[-1].isdigit() and (p / "actor").is_dir()
    ]
    found = [(k, p) for k, p in found if k < step]
    return max(found)[1] if found else None


def read_state(root: str | Path) -> dict:
    path = Path(root) / GUARD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _alarm_record(a: Alarm) -> dict:
    return {"rule": a.rule, "stream": a.stream, "step": a.step, "message": a.message, "evidence": a.evidence}


class GuardMixin:
    """Feeds verl's per-step metrics to the guard and acts on its alarms (module docstring)."""

    def fit(self, *args, **kwargs):
        cfg = guard_config(self.config)
        searches = (self.config.get("search_agent") or {}).get("max_searches")
        self._guard = Guard(cfg, max_searches=int(searches) if searches is not None else None)
        self._guard_pending: GuardSignal | None = None
        self._guard_started = False
        self._guard_dir = Path(self.config.trainer.default_local_dir).absolute()
        self._guard_record = {"action": cfg.action, "rollbacks": [], "stopped": None, "alarms": []}
        self._resume_after_rollback()
        result = super().fit(*args, **kwargs)
        self._write_guard_record()
        if self._guard_pending is not None:  # an alarm at the last step
            raise self._guard_pending
        return result

    def _resume_after_rollback(self) -> None:
        """When this attempt resumes from a guard rollback: the earlier record, and the run's metrics up to the
        checkpoint (for the run's ``metrics.jsonl``; the guard starts afresh, module docstring)."""
        trainer = self.config.trainer
        state = read_state(self._guard_dir)
        rollbacks = state.get("rollbacks") or []
        if trainer.get("resume_mode") != "resume_path" or not rollbacks:
            return
        if rollbacks[-1].get("checkpoint") != str(trainer.get("resume_from_path")):
            return
        self._guard_record.update(rollbacks=rollbacks, alarms=state.get("alarms") or [])
        until = int(rollbacks[-1]["resumed_step"])
        prior = []
        try:
            for line in (self._guard_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
                record = json.loads(line) if line.strip() else None
                if record and int(record["step"]) <= until:
                    prior.append((int(record["step"]), record["data"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("guard: earlier metrics not kept: %s: %s", type(e).__name__, e)
        self._report_prior = prior

    def _validate(self, *args, **kwargs):
        metrics = super()._validate(*args, **kwargs)
        if hasattr(self, "_guard") and not self._guard_started and metrics:
            self._guard.observe(int(self.global_steps), metrics)  # the validation before training: a baseline
        return metrics

    def on_train_begin(self):
        super().on_train_begin()
        self._guard_started = True

    def on_step_begin(self):
        if getattr(self, "_guard_pending", None) is not None:
            self._write_guard_record()
            raise self._guard_pending
        super().on_step_begin()

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        guard = getattr(self, "_guard", None)
        if guard is None or guard.config.action == "off":
            return
        fired = guard.observe(int(global_steps), metrics)
        for alarm in guard.new(fired):
            print(alarm.line(), flush=True)
            self._guard_record["alarms"].append(_alarm_record(alarm))
        metrics.update(guard.step_metrics(fired))
        if fired and guard.config.action in ("stop", "rollback") and self._guard_pending is None:
            self._guard_pending = self._act(fired, int(global_steps))

    def _act(self, fired: list[Alarm], step: int) -> GuardSignal:
        """What ends this attempt: a rollback to the checkpoint before ``step``, or a stop (saved first)."""
        cfg, alarm = self._guard.config, fired[0]
        reason = f"{alarm.rule} at step {step} ({alarm.stream}): {alarm.message}"
        if cfg.action == "rollback":
            why_not = None
            # before the steps the alarm's window averaged, if there is one: they may already be collapsing
            window = self._guard.streams[alarm.stream].window
            ckpt = checkpoint_before(self._guard_dir, step - window + 1) or checkpoint_before(self._guard_dir, step)
            if alarm.blames_retriever:
                why_not = "the retriever is failing; a rollback cannot fix it"
            elif len(self._guard_record["rollbacks"]) >= cfg.max_rollbacks:
                why_not = f"guard.max_rollbacks ({cfg.max_rollbacks}) used up"
            elif ckpt is None:
                why_not = f"no checkpoint before step {step} under {self._guard_dir} (trainer.save_freq)"
            if why_not is None:
                resumed = int(ckpt.name.rsplit("_", 1)[-1])
                self._guard_record["rollbacks"].append(
                    {"alarm_step": step, "rule": alarm.rule, "reason": reason, "checkpoint": str(ckpt),
                     "resumed_step": resumed, "overrides": cfg.rollback_overrides}
                )  # fmt: skip
                print(f"guard: rolling back to {ckpt} (step {resumed}): {reason}", flush=True)
                return GuardRollback(f"guard: rollback to step {resumed}: {reason}", str(ckpt))
            reason = f"{reason} [no rollback: {why_not}]"
        if not (self._guard_dir / f"global_step_{step}" / "actor").is_dir():
            try:
                self._save_checkpoint()
            except Exception as e:  # the stop and its reason matter more than the checkpoint
                logger.warning("guard: checkpoint at the stop failed: %s: %s", type(e).__name__, e)
        self._guard_record["stopped"] = {"step": step, "reason": reason}
        print(f"guard: stopping the run: {reason}", flush=True)
        return GuardStop(f"guard stopped the run at step {step}: {reason}")

    def _write_guard_record(self) -> None:
        try:
            self._guard_dir.mkdir(parents=True, exist_ok=True)
            (self._guard_dir / GUARD_FILE).write_text(json.dumps(self._guard_record, indent=1), encoding="utf-8")
        except OSError as e:
            logger.warning("guard: %s not written: %s", GUARD_FILE, e)

    def _guard_summary(self) -> list[str]:
        guard = getattr(self, "_guard", None)
        if guard is None or guard.config.action == "off":
            return []
        lines = summary_lines(guard)
        lines += [f"guard: rolled back at step {r['alarm_step']} to step {r['resumed_step']}"
                  for r in self._guard_record["rollbacks"]]  # fmt: skip
        if self._guard_record["stopped"]:
            lines.append(f"guard: stopped at step {self._guard_record['stopped']['step']}")
        return lines


def _signal_in(error: BaseException) -> GuardSignal | None:
    """The :class:`GuardSignal` behind ``error``. A Ray task error wraps it as ``cause``; the wrapper is an instance
    of the cause's class too (``as_instanceof_cause``) but carries only ``(cause,)`` as its ``args``: unwrap first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(error, GuardSignal) and cause is None:
            return error
        error = cause or error.__cause__
    return None


def apply_rollback(config: Any, signal: GuardRollback) -> None:
    """Point ``config`` at the rollback's checkpoint and apply ``guard.rollback_overrides``."""
    from omegaconf import OmegaConf, open_dict

    with open_dict(config):
        config.trainer.resume_mode = "resume_path"
        config.trainer.resume_from_path = signal.checkpoint
        for key, value in flatten(guard_config(config).rollback_overrides).items():
            OmegaConf.update(config, key, value, merge=True)


def guarded(run_ppo):
    """``run_ppo`` that turns a guard stop into its reason and :data:`EXIT_STATUS`, and a rollback into a new
    attempt from the checkpoint (module docstring)."""
    if getattr(run_ppo, "_research_plugin_guard", False):
        return run_ppo

    @functools.wraps(run_ppo)
    def run(config, *args, **kwargs):
        attempts = guard_config(config).max_rollbacks + 1
        for _ in range(attempts):
            try:
                return run_ppo(config, *args, **kwargs)
            except Exception as e:
                signal = _signal_in(e)
                if signal is None:
                    raise
                import ray

                ray.shutdown()
                if isinstance(signal, GuardRollback):
                    apply_rollback(config, signal)
                    print(f"{signal}\nguard: starting again from {signal.checkpoint}", file=sys.stderr, flush=True)
                    continue
                print(str(signal), file=sys.stderr, flush=True)
                sys.exit(EXIT_STATUS)
        print(f"guard stopped the run: more than {attempts - 1} rollbacks", file=sys.stderr, flush=True)
        sys.exit(EXIT_STATUS)

    run._research_plugin_guard = True
    return run


def install() -> None:
    """Wrap ``run_ppo`` of verl's launcher (``python -m verl.trainer.main_ppo`` runs it as ``__main__``) with
    :func:`guarded`; called from the start-up check, in the launcher's process, before ``run_ppo`` runs."""
    for name in ("__main__", "verl.trainer.main_ppo"):
        module = sys.modules.get(name)
        if module is not None and callable(getattr(module, "run_ppo", None)) and hasattr(module, "TaskRunnerV1"):
            module.run_ppo = guarded(module.run_ppo)


__all__ = ["GuardMixin", "GuardRollback", "GuardSignal", "GuardStop", "guarded", "install"]
