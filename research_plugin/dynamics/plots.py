"""``research-plugin plot``: PNGs of a training run like the papers' training-dynamics figures (reward, response
length, searches per trajectory over steps; training curve plus one validation curve per benchmark), from the
series :mod:`.training_logs` reads back out of verl's logs. A figure with no data is skipped with a message. The guard's
alarms (:mod:`research_plugin.core.guard`, replayed over the logs unless given) are marked on every figure: a red
dotted line at the step of each rule's first alarm, labelled with the rule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..core.guard import Alarm, replay
from .training_logs import VAL_KEY, Series, load_metrics


@dataclass(frozen=True)
class Panel:
    name: str
    title: str
    ylabel: str
    train_keys: tuple[str, ...]
    """Training-step keys; the first one in the logs is drawn."""
    val_vars: tuple[str, ...]
    """Validation variables (``val-core|val-aux/<benchmark>/<var>/mean@N``); the first one found per benchmark."""


PANELS = (
    Panel("reward", "Reward", "reward", ("critic/score/mean", "search/score/mean"), ("reward", "score")),
    Panel("response_length", "Response length", "tokens", ("response_length/mean",), ("response_length",)),
    Panel("searches", "Searches per trajectory", "searches", ("search/num_searches/mean",), ("num_searches",)),
)


def panel_curves(metrics: Mapping[str, Series], panel: Panel) -> dict[str, Series]:
    """The curves of one panel: ``"train"`` and ``"val/<benchmark>"``, those the logs have."""
    curves: dict[str, Series] = {}
    train = next((k for k in panel.train_keys if k in metrics), None)
    if train is not None:
        curves["train"] = metrics[train]
    found: dict[str, dict[str, tuple[int, str]]] = {}  # benchmark -> var -> (largest N, key)
    for key in metrics:
        m = VAL_KEY.match(key)
        if m and m["var"] in panel.val_vars:
            best = found.setdefault(m["source"], {}).get(m["var"])
            if best is None or int(m["n"]) > best[0]:
                found[m["source"]][m["var"]] = (int(m["n"]), key)
    for source in sorted(found):
        var = next(v for v in panel.val_vars if v in found[source])
        curves[f"val/{source}"] = metrics[found[source][var][1]]
    return curves


def alarm_marks(alarms: Iterable[Alarm]) -> dict[int, str]:
    """``{step: "rule, rule"}``: where the first alarm of each rule falls."""
    marks: dict[int, list[str]] = {}
    seen = set()
    for a in alarms:
        if a.rule not in seen:
            seen.add(a.rule)
            marks.setdefault(a.step, []).append(a.rule)
    return {step: ", ".join(rules) for step, rules in sorted(marks.items())}


def _draw(panel: Panel, curves: Mapping[str, Series], path: Path, marks: Mapping[int, str] | None = None) -> None:
    from matplotlib.figure import Figure  # the object API: no pyplot state, renders with Agg

    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot()
    for label, series in curves.items():
        steps = sorted(series)
        values = [series[s] for s in steps]
        if label == "train":
            ax.plot(steps, values, label="train", linewidth=1.5)
        else:
            ax.plot(steps, values, label=label, marker="o", markersize=3, linestyle="--", linewidth=1)
    for step, rules in (marks or {}).items():
        ax.axvline(step, color="tab:red", linestyle=":", linewidth=1.2)
        ax.annotate(rules, (step, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                    fontsize="x-small", color="tab:red")  # fmt: skip
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)


def plot_training(
    logs: Iterable[str | Path], out: str | Path, alarms: Iterable[Alarm] | None = None
) -> dict[str, dict[str, Series]]:
    """Write ``<panel>.png`` into ``out`` for each panel with data, alarms marked (``None``: the guard's default
    rules replayed over the logs); return the curves drawn, by panel."""
    logs = list(logs)
    metrics = load_metrics(logs)
    marks = alarm_marks(replay(metrics).alarms if alarms is None else alarms)
    for step, rules in marks.items():
        print(f"plot: guard alarm at step {step}: {rules}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawn = {}
    for panel in PANELS:
        curves = panel_curves(metrics, panel)
        if not curves:
            print(
                f"plot: skipped {panel.name}: the logs have none of {', '.join(panel.train_keys)} and no validation "
                f"{'/'.join(panel.val_vars)}"
            )
            continue
        path = out / f"{panel.name}.png"
        _draw(panel, curves, path, marks)
        print(f"plot: wrote {path} ({', '.join(curves)})")
        drawn[panel.name] = curves
    if not drawn:
        print(f"plot: no metric series found in {', '.join(map(str, logs))}")
    return drawn
