"""Guardrails: catch a collapsing search-RL run from its per-step metrics, say which failure shape it is, and why.

Each rule watches one known collapse (Search-R1 issues 88, 89, 92, 186; ZeroSearch 23; Agent-R1 8; DeepResearch
96) and explains itself in one line with its evidence:

- ``format_fall``: the format-valid rate fell from its best (the policy stopped closing its tags);
- ``search_collapse``: searches per trajectory fell to ~0 after the policy had searched;
- ``search_pinned``: searches per trajectory run into ``max_searches`` (every trajectory spends the whole budget);
- ``truncation``: most responses hit the length limit (no answer: format and F1 read 0);
- ``entropy_collapse`` / ``entropy_explosion``: the policy's token entropy fell far below, or rose far above, its
  value at the start;
- ``reward_hacking``: the reward rose while answer F1 fell to half its best (or format fell): the policy optimises
  something other than answers (a garbled call that still earns reward, a reward of the wrong sign);
- ``retriever_failures``: failed searches above a rate: the retriever, not the policy. While it fires, the other
  rules' alarms of that step are put down to it (listed in its evidence), not to the policy.

A rule compares means over the last ``window`` observations (full windows only) with earlier ones, on two streams:
training steps (verl's keys: ``search/<key>/mean``, ``critic/score/mean``, ``actor/entropy``, ...; OpenRLHF's
``train/<key>`` of the agent's extra logs) and validations (``val-core|val-aux/<benchmark>/<var>/mean@N``, averaged
over benchmarks, window 1): :data:`SIGNALS`. Thresholds have defaults;
a ``guard`` mapping overrides them (:meth:`GuardConfig.from_mapping`, checked like every setting:
:mod:`.settings`). :class:`Guard` is fed step by step (the verl trainer modes: ``research_plugin.verl.guard``);
:func:`replay` runs it over a finished run's series (``research-plugin guard``, ``research-plugin plot``).
No framework imports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..dynamics.training_logs import validation_means
from .settings import as_mapping, check_fields, check_keys, limits

ACTIONS = ("off", "warn", "stop", "rollback")

# signal -> (training keys, first present wins; validation variables, first present wins). Training keys: verl's
# trainer modes first, then OpenRLHF's logs of the agent's extra_logs (``train/<key>``, tensorboard or wandb).
SIGNALS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "reward": (("critic/score/mean", "search/score/mean", "train/score"), ("reward", "score")),
    "f1": (("search/f1/mean", "train/f1"), ("f1",)),
    "format": (("search/format/mean", "train/format"), ("format",)),
    "searches": (("search/num_searches/mean", "train/num_searches"), ("num_searches",)),
    "failed": (("search/num_failed_searches/mean", "train/num_failed_searches"), ("num_failed_searches",)),
    "truncated": (
        ("search/truncated/mean", "response_length/clip_ratio", "train/truncated", "train/rollout/truncated_rate"),
        ("truncated",),
    ),
    "entropy": (("actor/entropy",), ()),
}


@dataclass(frozen=True)
class Alarm:
    rule: str
    stream: str
    """``train`` (training steps) or ``val`` (validations)."""
    step: int
    message: str
    """One line: what was seen, with its numbers, and what it means."""
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def blames_retriever(self) -> bool:
        return self.rule == RetrieverFailures.name

    def line(self) -> str:
        return f"guard: {self.rule} at step {self.step} ({self.stream}): {self.message}"


class History:
    """One stream's observations: ``{signal: [(step, value), ...]}`` in step order, and the window means."""

    def __init__(self, name: str, window: int) -> None:
        self.name, self.window = name, window
        self.values: dict[str, list[tuple[int, float]]] = {}

    def add(self, step: int, observed: Mapping[str, float]) -> None:
        for signal, value in observed.items():
            xs = self.values.setdefault(signal, [])
            if xs and xs[-1][0] == step:
                xs[-1] = (step, value)
            else:
                xs.append((step, value))

    def windows(self, signal: str) -> list[tuple[int, float]]:
        """``(last step, mean)`` of every full window of ``signal``, oldest first."""
        xs, w = self.values.get(signal, []), self.window
        return [(xs[i][0], sum(v for _, v in xs[i - w + 1 : i + 1]) / w) for i in range(w - 1, len(xs))]

    def now(self, signal: str, step: int) -> float | None:
        """The window ending at ``step``, if ``signal`` was observed at ``step`` and has a full window."""
        ws = self.windows(signal)
        return ws[-1][1] if ws and ws[-1][0] == step else None

    def best(self, signal: str, before: int | None = None) -> tuple[int, float] | None:
        """The highest window (its step and mean), among those ending before ``before`` when given."""
        ws = [w for w in self.windows(signal) if before is None or w[0] < before]
        return max(ws, key=lambda w: w[1]) if ws else None

    def first(self, signal: str) -> tuple[int, float] | None:
        ws = self.windows(signal)
        return ws[0] if ws else None


def _r(x: float) -> float:
    return round(float(x), 4)


@dataclass(frozen=True)
class Rule:
    """A named check over a :class:`History`; its dataclass fields are the thresholds a user may override."""

    name: ClassVar[str] = ""
    enabled: bool = True

    def check(self, h: History, step: int, max_searches: int | None) -> tuple[str, dict] | None:
        """``(one-line message, evidence)`` when the rule fires at ``step``, else None."""
        raise NotImplementedError


@dataclass(frozen=True)
class FormatFall(Rule):
    name: ClassVar[str] = "format_fall"
    drop: float = field(default=0.2, metadata=limits(gt=0))
    """Fires when the format-valid rate is this far (absolute) below its best."""

    def check(self, h, step, max_searches):
        now, best = h.now("format", step), h.best("format", before=step)
        if now is None or best is None or best[1] - now < self.drop:
            return None
        return (
            f"format-valid rate fell from {best[1]:.2f} (step {best[0]}) to {now:.2f}: the policy stopped writing "
            "its tags properly (unclosed answer / query), so the reward's format check fails",
            {"format": _r(now), "best": _r(best[1]), "best_step": best[0], "drop": self.drop},
        )


@dataclass(frozen=True)
class SearchCollapse(Rule):
    name: ClassVar[str] = "search_collapse"
    below: float = field(default=0.05, metadata=limits(ge=0))
    """Fires when searches per trajectory fall below this..."""
    after: float = field(default=0.25, metadata=limits(gt=0))
    """...after they had reached this (a policy that never searched has not collapsed)."""

    def check(self, h, step, max_searches):
        now, best = h.now("searches", step), h.best("searches", before=step)
        if now is None or best is None or best[1] < self.after or now >= self.below:
            return None
        return (
            f"searches per trajectory collapsed to {now:.2f} from {best[1]:.2f} (step {best[0]}): the policy "
            "stopped searching and answers from memory",
            {"searches": _r(now), "best": _r(best[1]), "best_step": best[0], "below": self.below},
        )


@dataclass(frozen=True)
class SearchPinned(Rule):
    name: ClassVar[str] = "search_pinned"
    fraction: float = field(default=0.95, metadata=limits(gt=0))
    """Fires when searches per trajectory reach this fraction of ``max_searches`` (skipped when it is unknown)."""

    def check(self, h, step, max_searches):
        now = h.now("searches", step)
        if now is None or not max_searches or now < self.fraction * max_searches:
            return None
        return (
            f"searches per trajectory at {now:.2f} of max_searches {max_searches}: the policy runs into the search "
            "limit every time (searching instead of answering, or queries that never satisfy it)",
            {"searches": _r(now), "max_searches": max_searches, "fraction": self.fraction},
        )


@dataclass(frozen=True)
class Truncation(Rule):
    name: ClassVar[str] = "truncation"
    above: float = field(default=0.5, metadata=limits(ge=0))
    """Fires when more than this share of responses hit the length limit."""

    def check(self, h, step, max_searches):
        now = h.now("truncated", step)
        if now is None or now <= self.above:
            return None
        return (
            f"{now:.0%} of responses truncated at the length limit: they end without an answer (rambling or "
            "endless searching); raise the response length or look at what they write",
            {"truncated": _r(now), "above": self.above},
        )


@dataclass(frozen=True)
class EntropyCollapse(Rule):
    name: ClassVar[str] = "entropy_collapse"
    fraction: float = field(default=0.05, metadata=limits(gt=0))
    """Fires when entropy falls below this fraction of its first window."""

    def check(self, h, step, max_searches):
        now, first = h.now("entropy", step), h.first("entropy")
        if now is None or first is None or first[1] <= 0 or now >= self.fraction * first[1]:
            return None
        return (
            f"token entropy collapsed to {now:.4f} from {first[1]:.4f} (step {first[0]}): the policy stopped "
            "exploring; group advantages vanish and learning stalls",
            {"entropy": _r(now), "start": _r(first[1]), "fraction": self.fraction},
        )


@dataclass(frozen=True)
class EntropyExplosion(Rule):
    name: ClassVar[str] = "entropy_explosion"
    factor: float = field(default=3.0, metadata=limits(gt=1))
    """Fires when entropy rises above this multiple of its first window."""

    def check(self, h, step, max_searches):
        now, first = h.now("entropy", step), h.first("entropy")
        if now is None or first is None or first[1] <= 0 or now <= self.factor * first[1]:
            return None
        return (
            f"token entropy exploded to {now:.4f} from {first[1]:.4f} (step {first[0]}): the policy is drifting "
            "towards noise (learning rate too high, or an unstable update)",
            {"entropy": _r(now), "start": _r(first[1]), "factor": self.factor},
        )


@dataclass(frozen=True)
class RewardHacking(Rule):
    name: ClassVar[str] = "reward_hacking"
    f1_fall: float = field(default=0.5, metadata=limits(gt=0))
    """Fires when F1 is at most (1 - this) times its best (or format fell by ``format_fall.drop``)..."""
    reward_rise: float = field(default=0.05, metadata=limits(ge=0))
    """...while the reward is at least this much above where it stood at that best."""
    format_drop: float = field(default=0.2, metadata=limits(gt=0))

    def check(self, h, step, max_searches):
        reward = h.now("reward", step)
        if reward is None:
            return None
        for signal, fell in (
            ("f1", lambda now, best: now <= (1 - self.f1_fall) * best),
            ("format", lambda now, best: best - now >= self.format_drop),
        ):
            now, best = h.now(signal, step), h.best(signal, before=step)
            if now is None or best is None or best[1] <= 0 or not fell(now, best[1]):
                continue
            then = dict(h.windows("reward")).get(best[0])
            if then is None or reward - then < self.reward_rise:
                continue
            return (
                f"reward rose from {then:.3f} to {reward:.3f} while {signal} fell from {best[1]:.2f} (step {best[0]}) "
                f"to {now:.2f}: the policy is optimising something other than answers (reward hacking, or a reward "
                "with the wrong sign)",
                {"reward": _r(reward), "reward_then": _r(then), signal: _r(now), "best": _r(best[1]),
                 "best_step": best[0]},
            )  # fmt: skip
        return None


@dataclass(frozen=True)
class RetrieverFailures(Rule):
    name: ClassVar[str] = "retriever_failures"
    rate: float = field(default=0.2, metadata=limits(ge=0))
    """Fires when more than this share of searches failed (error or timeout)."""

    def check(self, h, step, max_searches):
        failed, searches = h.now("failed", step), h.now("searches", step)
        if failed is None or not searches or failed / searches <= self.rate:
            return None
        return (
            f"{failed / searches:.0%} of searches failed (errors or timeouts): the retriever, not the policy; check "
            "the retrieval server (its log, `research-plugin search`) before blaming the run",
            {"failed_per_trajectory": _r(failed), "searches_per_trajectory": _r(searches), "rate": self.rate},
        )


RULES: tuple[type[Rule], ...] = (
    RetrieverFailures, FormatFall, SearchCollapse, SearchPinned, Truncation, EntropyCollapse, EntropyExplosion,
    RewardHacking,
)  # fmt: skip
RULE_NAMES = tuple(r.name for r in RULES)


@dataclass(frozen=True)
class GuardConfig:
    """The ``guard`` block: what to do on an alarm, the window, the rules' thresholds and the rollback."""

    action: str = field(default="warn", metadata=limits(choices=ACTIONS))
    """``warn`` (log, summary, ``guard/*`` metrics), ``stop`` (save and end with a non-zero exit), ``rollback``
    (reload the last checkpoint before the first alarm, apply ``rollback_overrides``, go on), or ``off``."""
    window: int = field(default=2, metadata=limits(ge=1))
    """Training steps averaged before comparing (validations: 1)."""
    max_searches: int | None = field(default=None, metadata=limits(ge=0))
    """For ``search_pinned``; None: the run's ``search_agent.max_searches``."""
    rules: Any = None
    """``{rule: {threshold: value, enabled: bool}}``; rules not named keep their defaults."""
    max_rollbacks: int = field(default=1, metadata=limits(ge=0))
    rollback_overrides: Any = None
    """Config settings changed when rolling back (a nested mapping, e.g. ``{actor_rollout_ref: {actor: {optim:
    {lr: 1.0e-4}}}}``); the framework adapter checks that they exist."""

    @classmethod
    def from_mapping(cls, data: Any, where: str = "guard") -> GuardConfig:
        values = check_fields(cls, as_mapping(data, where), where, "guard settings")
        rules = as_mapping(values.get("rules"), f"{where}: rules")
        check_keys(rules, RULE_NAMES, f"{where}: rules", "guard rule")
        values["rules"] = {
            name: check_fields(
                _RULE[name], as_mapping(params, f"{where}: rules.{name}"), f"{where}: rules.{name}", "setting"
            )
            for name, params in rules.items()
        }
        values["rollback_overrides"] = as_mapping(values.get("rollback_overrides"), f"{where}: rollback_overrides")
        return cls(**values)

    def built_rules(self) -> list[Rule]:
        """The enabled rules, their thresholds updated by :attr:`rules` (as :meth:`from_mapping` read them)."""
        given = self.rules or {}
        rules = [cls(**(given.get(cls.name) or {})) for cls in RULES]
        return [r for r in rules if r.enabled]


_RULE = {r.name: r for r in RULES}


def observations(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """One step's metrics as ``{"train": {signal: value}, "val": {signal: value}}`` (:data:`SIGNALS`)."""
    numbers = {k: float(v) for k, v in metrics.items() if _is_number(v)}
    val_means = validation_means(numbers)
    out: dict[str, dict[str, float]] = {"train": {}, "val": {}}
    for signal, (train_keys, val_vars) in SIGNALS.items():
        for stream, names, source in (("train", train_keys, numbers), ("val", val_vars, val_means)):
            name = next((n for n in names if n in source), None)
            if name is not None:
                out[stream][signal] = source[name]
    return out


def _is_number(v: Any) -> bool:
    try:
        return not isinstance(v, (str, bytes)) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


class Guard:
    """Feed it each step's metrics (:meth:`observe`); it returns the alarms of that step and keeps them all."""

    def __init__(self, config: GuardConfig | None = None, max_searches: int | None = None) -> None:
        self.config = config or GuardConfig()
        self.max_searches = self.config.max_searches if self.config.max_searches is not None else max_searches
        self.rules = self.config.built_rules()
        self.streams = {"train": History("train", self.config.window), "val": History("val", 1)}
        self.alarms: list[Alarm] = []
        self._firing: set[tuple[str, str]] = set()

    def observe(self, step: int, metrics: Mapping[str, Any]) -> list[Alarm]:
        """The alarms firing at ``step`` (on either stream); all are kept in :attr:`alarms`."""
        fired: list[Alarm] = []
        for stream, observed in observations(metrics).items():
            if not observed:
                continue
            h = self.streams[stream]
            h.add(step, observed)
            found = []
            for rule in self.rules:
                hit = rule.check(h, step, self.max_searches)
                if hit is not None:
                    found.append(Alarm(rule.name, stream, step, *hit))
            blame = next((a for a in found if a.blames_retriever), None)
            if blame is not None and len(found) > 1:  # the retriever explains the rest
                explained = [a.rule for a in found if a is not blame]
                found = [dataclasses.replace(blame, evidence={**blame.evidence, "explains": explained})]
            fired.extend(found)
        self.alarms.extend(fired)
        return fired

    def new(self, fired: list[Alarm]) -> list[Alarm]:
        """Those of ``fired`` (this step's) whose rule did not fire at the previous step: worth a log line."""
        out = [a for a in fired if (a.rule, a.stream) not in self._firing]
        self._firing = {(a.rule, a.stream) for a in fired}
        return out

    def step_metrics(self, fired: list[Alarm]) -> dict[str, float]:
        """``guard/<rule>`` (1 when firing at this step, else 0) for every enabled rule, and ``guard/alarms``."""
        rules = {a.rule for a in fired}
        return {f"guard/{r.name}": float(r.name in rules) for r in self.rules} | {"guard/alarms": float(len(fired))}

    def first_alarms(self) -> list[Alarm]:
        """The first alarm of each rule and stream, in order."""
        seen, out = set(), []
        for a in self.alarms:
            if (a.rule, a.stream) not in seen:
                seen.add((a.rule, a.stream))
                out.append(a)
        return out


def replay(
    series: Mapping[str, Mapping[int, float]], config: GuardConfig | None = None, max_searches: int | None = None
) -> Guard:
    """A :class:`Guard` fed a finished run's series (``{key: {step: value}}``, as ``dynamics.training_logs`` reads
    them), step by step."""
    guard = Guard(config, max_searches)
    steps = sorted({s for xs in series.values() for s in xs})
    for step in steps:
        guard.observe(step, {k: xs[step] for k, xs in series.items() if step in xs})
    return guard


def summary_lines(guard: Guard) -> list[str]:
    """What a run's summary says about the guard: its first alarms, or that none fired."""
    first = guard.first_alarms()
    if not first:
        return [f"guard: no alarm ({len(guard.rules)} rules, action {guard.config.action})"]
    return [a.line() for a in first]


__all__ = [
    "ACTIONS", "Alarm", "Guard", "GuardConfig", "History", "RULES", "RULE_NAMES", "SIGNALS", "observations", "replay",
    "summary_lines",
]  # fmt: skip
