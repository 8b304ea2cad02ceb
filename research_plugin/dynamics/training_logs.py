"""Metric series of a verl training run, read back from what verl's trackers write.

* console (``trainer.logger=[console]``): lines ``step:N - key:value - ...`` (verl's ``LocalLogger``; numpy values
  print as ``np.float64(0.5)``), possibly behind a Ray prefix such as ``(TaskRunner pid=7)`` and colour codes;
* file (``trainer.logger=[file]``): jsonl lines ``{"step": N, "data": {key: value}}`` (verl's ``FileLogger``, at
  ``$VERL_FILE_LOGGER_PATH`` or ``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl``);
* tensorboard (``trainer.logger=[tensorboard]``): event files under ``$TENSORBOARD_DIR`` or
  ``tensorboard_log/<project>/<experiment>``.

A series is ``{step: value}``; later lines of the same key and step win.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

Series = dict[int, float]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STEP = re.compile(r"(?:^|[\s)])step:(\d+)(?= - |\s*$)")
_NUMPY = re.compile(r"^np\.\w+\((.*)\)$")
_CONSOLE_SUFFIXES = (".log", ".txt", ".out", ".err")
VAL_KEY = re.compile(r"^val-(?:core|aux)/(?P<source>.+)/(?P<var>[^/]+)/mean@(?P<n>\d+)$")
"""verl's validation metric names: ``val-core|val-aux/<benchmark>/<var>/mean@N``."""


def validation_means(metrics: dict) -> dict[str, float]:
    """``{var: mean over benchmarks}`` of one step's validation metrics (:data:`VAL_KEY`; non-numbers skipped)."""
    found: dict[str, list[float]] = {}
    for key, value in metrics.items():
        m = VAL_KEY.match(key)
        if m and isinstance(value, (int, float)) and not isinstance(value, bool):
            found.setdefault(m["var"], []).append(float(value))
    return {var: sum(xs) / len(xs) for var, xs in found.items()}


def _number(text: str) -> float | None:
    text = text.strip()
    m = _NUMPY.match(text)
    if m:
        text = m.group(1).strip()
    if text in ("True", "False"):
        return float(text == "True")
    try:
        return float(text)
    except ValueError:
        return None


def parse_console(lines: Iterable[str]) -> dict[str, Series]:
    """Series from verl console output; lines that are not metric lines are ignored."""
    series: dict[str, Series] = defaultdict(dict)
    for line in lines:
        line = _ANSI.sub("", line.rstrip("\n"))
        m = _STEP.search(line)
        if m is None:
            continue
        step = int(m.group(1))
        for part in line[m.end() :].split(" - "):
            key, sep, value = part.rpartition(":")
            number = _number(value) if sep else None
            if key and number is not None:
                series[key.strip()][step] = number
    return dict(series)


def parse_file_logger(lines: Iterable[str]) -> dict[str, Series]:
    """Series from verl's ``file`` logger jsonl; unreadable lines are skipped (and counted in a warning)."""
    series: dict[str, Series] = defaultdict(dict)
    bad = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, data = int(record["step"]), record["data"]
            items = data.items()
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
            continue
        for key, value in items:
            if isinstance(value, (int, float)):  # bools too
                series[key][step] = float(value)
    if bad:
        logger.warning("skipped %d unreadable file-logger line(s)", bad)
    return dict(series)


def parse_tensorboard(run_dir: str | Path) -> dict[str, Series]:
    """Scalar series of the tensorboard event files in ``run_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {int(e.step): float(e.value) for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _is_file_logger(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:
                    return False
                return isinstance(record, dict) and "step" in record and isinstance(record.get("data"), dict)
    return False


def _merge(into: dict[str, Series], more: dict[str, Series]) -> None:
    for key, series in more.items():
        into.setdefault(key, {}).update(series)


def load_metrics(paths: Iterable[str | Path]) -> dict[str, Series]:
    """All series found in ``paths``. A file is a file-logger jsonl, a tensorboard event file or console text (told
    apart by content and name); a folder is searched for ``*.jsonl`` file-logger output, console logs
    (``*.log``, ``*.txt``, ``*.out``, ``*.err``) and tensorboard event files."""
    found: dict[str, Series] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no such log file or folder: {path}")
        explicit = not path.is_dir()
        files = [path] if explicit else sorted(p for p in path.rglob("*") if p.is_file())
        for p in files:
            if "tfevents" in p.name:
                continue
            if (p.suffix == ".jsonl" or explicit) and _is_file_logger(p):
                with p.open(encoding="utf-8", errors="replace") as f:
                    _merge(found, parse_file_logger(f))
            elif p.suffix in _CONSOLE_SUFFIXES or explicit:
                with p.open(encoding="utf-8", errors="replace") as f:
                    _merge(found, parse_console(f))
        for events in sorted({p if explicit else p.parent for p in files if "tfevents" in p.name}):
            _merge(found, parse_tensorboard(events))
    return {k: v for k, v in found.items() if v}
