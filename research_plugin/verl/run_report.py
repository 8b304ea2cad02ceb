"""What a training run ends with, for the person who started it: the metrics, their plots, and a short summary.

The plugin's trainer modes (:mod:`.trainer_modes`) record every step's metrics and every validation; when verl's
``fit`` returns they write, under ``trainer.default_local_dir``:

- ``metrics.jsonl``: one ``{"step", "data"}`` line per logged step, verl's file-logger format (``research-plugin
  plot`` reads it);
- ``plots/``: reward, response length and searches over the steps, training and validation curves;
- ``research_plugin_run.json`` (written when ``fit`` starts): the run's search, reward and length settings, which
  ``research-plugin eval`` and ``demo`` of the run's folder use (:mod:`.run_settings`);

and print a summary: validation reward, answer F1 and searches per question before and after training, steps,
wall time, the checkpoint (its Hugging Face copy when the run saved one) and the commands to try it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from ..checkpoints import latest_hf_checkpoint
from ..dynamics.training_logs import validation_means
from .guard import GuardSignal
from .run_settings import record_run

logger = logging.getLogger(__name__)

REPORTED = (("reward", ("reward", "score")), ("answer F1", ("f1",)), ("searches / question", ("num_searches",)))


class RunReportMixin:
    """Records metrics and validations of a verl trainer, and reports when ``fit`` returns (module docstring)."""

    def fit(self, *args, **kwargs):
        self._report_steps: list[tuple[int, dict[str, float]]] = []
        self._report_validations: list[tuple[int, dict[str, float]]] = []
        try:  # what `research-plugin eval` / `demo` of this run's folder search with (.run_settings)
            record_run(self.config, self.config.trainer.default_local_dir)
        except Exception as e:  # they fall back to their defaults, and say so
            logger.warning("run settings not recorded: %s: %s", type(e).__name__, e)
        start = time.monotonic()
        try:
            result = super().fit(*args, **kwargs)
        except GuardSignal:  # the guard ended the run (.guard): it still reports, its alarms included
            self._report_safely(time.monotonic() - start)
            raise
        self._report_safely(time.monotonic() - start)
        return result

    def _report_safely(self, seconds: float) -> None:
        try:
            self._report(seconds)
        except Exception as e:  # a report that fails must not fail a finished run
            logger.warning("run report failed: %s: %s", type(e).__name__, e)

    def _validate(self, *args, **kwargs):
        metrics = super()._validate(*args, **kwargs)
        if hasattr(self, "_report_validations") and metrics:
            self._report_validations.append((int(self.global_steps), _numbers(metrics)))
        return metrics

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
        if hasattr(self, "_report_steps"):
            self._report_steps.append((int(global_steps), _numbers(metrics)))

    def _report(self, seconds: float) -> None:
        trainer = self.config.trainer
        out = Path(trainer.default_local_dir)
        out.mkdir(parents=True, exist_ok=True)
        prior = getattr(self, "_report_prior", [])  # the steps before a guard rollback's checkpoint
        validations = [] if prior else [(0, m) for step, m in self._report_validations if step == 0]
        lines = prior + validations + self._report_steps
        path = out / "metrics.jsonl"
        path.write_text("".join(json.dumps({"step": s, "data": m}) + "\n" for s, m in lines), encoding="utf-8")
        plots = out / "plots"
        try:
            from ..dynamics.plots import plot_training

            guard = getattr(self, "_guard", None)
            plot_training([path], plots, alarms=guard.first_alarms() if guard is not None else None)
        except Exception as e:  # matplotlib missing, nothing to draw: the run still reports
            logger.warning("no plots: %s: %s", type(e).__name__, e)
        val = self.config.data.get("val_files")
        val = [val] if isinstance(val, str) else list(val or [])
        print(
            summary(
                trainer.experiment_name, self._report_steps, self._report_validations, seconds, out, plots,
                val_files=val, retriever=_retriever_arg(self.config.get("search_agent", {}).get("retriever")),
            )
        )  # fmt: skip
        for line in self._guard_summary() if hasattr(self, "_guard_summary") else []:
            print(line)


def _retriever_arg(spec) -> str | None:
    """The ``--retriever`` value of ``eval`` for the run's retriever spec: the string itself, a bm25 spec's corpus
    file; None when the command line cannot name it (an index needing more options)."""
    if isinstance(spec, str):
        return spec
    if spec is not None and spec.get("type") == "bm25" and isinstance(spec.get("corpus"), str):
        return spec["corpus"]
    return None


def _numbers(metrics: Mapping) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def summary(
    name, steps, validations, seconds: float, out: Path, plots: Path, val_files=(), retriever: str | None = None
) -> str:
    """The few lines a run ends with (see the module docstring)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    lines = [f"\n=== {name}: {len(steps)} training steps in {minutes} min {secs} s ==="]
    if validations:
        first, last = validation_means(validations[0][1]), validation_means(validations[-1][1])
        lines.append(f"{'validation':24}{'step ' + str(validations[0][0]):>12}{'step ' + str(validations[-1][0]):>12}")
        for label, names in REPORTED:
            var = next((v for v in names if v in first or v in last), None)
            if var is not None:
                a, b = first.get(var), last.get(var)
                lines.append(f"  {label:22}{_fmt(a):>12}{_fmt(b):>12}")
    hf = latest_hf_checkpoint(out)
    lines.append(f"checkpoint: {hf if hf is not None else out}")
    if plots.is_dir() and any(plots.glob("*.png")):
        lines.append(f"plots:      {plots}/ ({', '.join(sorted(p.name for p in plots.glob('*.png')))})")
    lines.append(f"metrics:    {out / 'metrics.jsonl'}")
    if hf is not None:
        lines.append("next:")
        lines.append(f"  research-plugin demo --model {out}")
        data = " ".join(str(v) for v in val_files) or "<prepared parquet>"
        lines.append(
            f"  research-plugin eval --model {out} --data {data} --retriever {retriever or '<retriever>'} "
            f"--out {out / 'eval'}"
        )
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
