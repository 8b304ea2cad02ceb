"""Settings a user writes, checked once where they are read, with errors that say what, where and why.

Every reader of user settings (the agent's :class:`~.search_step.SearchAgentConfig`, the reward's
:class:`~.rewards.Options`, OpenRLHF's agent settings, a retriever spec) checks a mapping against the fields of a
dataclass (or the keyword parameters of a function) with :func:`check_fields`: unknown keys are errors, with a
"did you mean" when one is close; each value is converted to its field's declared type and checked against the
range or choices in the field's metadata (:func:`limits`). A bad setting raises :class:`SettingsError` naming the
key, the value, what was expected and where it came from (``where``: a file, an environment variable, the command
line, a row).

Text from YAML, JSON, an environment variable or a Hydra command line is coerced strictly: an ``int`` field takes
an integer or a string of digits (``"3"``; not ``3.0``, not ``true``), a ``float`` field a finite number or a
string that reads as one (``"0.5"``), a ``bool`` field ``true`` / ``false`` or the strings ``"true"`` / ``"false"``
(any case; not ``"no"``, not ``1``), a ``str`` field only a string. Anything else is rejected.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import math
import numbers
import re
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting that is unknown, of the wrong type or out of range; the message says which, and where from."""


def limits(
    *,
    ge: float | None = None,
    gt: float | None = None,
    choices: Collection[str] | Callable[[], Collection[str]] | None = None,
    check: Callable[[Any, str], Any] | None = None,
) -> dict[str, Any]:
    """Field metadata for :func:`check_fields`: a lower bound (``ge`` / ``gt``), the allowed ``choices`` (or a
    function returning them), or a ``check(value, where)`` that returns the value checked (or raises)."""
    return {k: v for k, v in {"ge": ge, "gt": gt, "choices": choices, "check": check}.items() if v is not None}


def did_you_mean(name: Any, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def check_keys(data: Mapping, known: Iterable[str], where: str, what: str) -> None:
    """Raise for the first key of ``data`` not in ``known`` (``what`` names the kind: "search_agent settings")."""
    known = list(known)
    for key in data:
        if key not in known:
            raise SettingsError(
                f"{_prefix(where)}unknown {what} {key!r}{did_you_mean(key, known)}; known: {', '.join(sorted(known))}"
            )


def check_choice(value: Any, choices: Iterable[str], where: str, what: str) -> str:
    """``value`` if it is one of ``choices``, else an error naming them (and the closest)."""
    choices = list(choices)
    if isinstance(value, str) and value in choices:
        return value
    raise SettingsError(
        f"{_prefix(where)}unknown {what} {value!r}{did_you_mean(value, choices)}; known: {', '.join(sorted(choices))}"
    )


_INT = re.compile(r"[+-]?\d+")
_TRUE, _FALSE = "true", "false"


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's


def _type_error(key: str, value: Any, expected: str, where: str) -> SettingsError:
    return SettingsError(f"{_prefix(where)}{key} must be {expected}, not {value!r}")


def to_bool(value: Any, key: str, where: str = "") -> bool:
    """``value`` as a bool: a bool, or the string "true" / "false" (any case)."""
    if _is_bool(value):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in (_TRUE, _FALSE):
        return value.strip().lower() == _TRUE
    raise _type_error(key, value, "true or false", where)


def convert(value: Any, tp: Any, key: str, where: str = "") -> Any:
    """``value`` converted to the type ``tp`` (``int``, ``float``, ``bool``, ``str``, ``X | None``; other types are
    taken as they are), or a :class:`SettingsError`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(value, inner[0], key, where) if len(inner) == 1 else value
    if tp is bool:
        return to_bool(value, key, where)
    if tp is int:
        if isinstance(value, numbers.Integral) and not _is_bool(value):
            return int(value)
        if isinstance(value, str) and _INT.fullmatch(value.strip()):
            return int(value)
        raise _type_error(key, value, "an integer", where)
    if tp is float:
        x = None
        if isinstance(value, numbers.Real) and not _is_bool(value):
            x = float(value)
        elif isinstance(value, str):
            try:
                x = float(value)
            except ValueError:
                x = None
        if x is None or not math.isfinite(x):
            raise _type_error(key, value, "a finite number", where)
        return x
    if tp is str and not isinstance(value, str):
        raise _type_error(key, value, "a string", where)
    return value


def _in_range(value: Any, meta: Mapping[str, Any], key: str, where: str) -> Any:
    if "check" in meta:
        value = meta["check"](value, f"{_prefix(where)}{key}")
    if "choices" in meta:
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        value = check_choice(value, choices, where, key)
    for bound, ok, text in (("ge", lambda x, b: x >= b, ">="), ("gt", lambda x, b: x > b, ">")):
        if bound in meta and value is not None and not ok(value, meta[bound]):
            raise SettingsError(f"{_prefix(where)}{key} out of range: must be {text} {meta[bound]:g}, not {value!r}")
    return value


@functools.cache
def _fields(cls: type) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints.get(f.name, Any), f.metadata) for f in dataclasses.fields(cls)}


def check_fields(cls: type, data: Mapping, where: str, what: str) -> dict[str, Any]:
    """The items of ``data`` checked against the fields of dataclass ``cls``: known keys, values converted to each
    field's type and within its :func:`limits`."""
    spec = _fields(cls)
    check_keys(data, spec, where, what)
    out = {}
    for key, value in data.items():
        tp, meta = spec[key]
        out[key] = _in_range(convert(value, tp, key, where), meta, key, where)
    return out


@functools.cache
def _parameters(fn: Callable) -> tuple[dict[str, Any], bool]:
    """The keyword parameters of ``fn`` with their types (``Any`` when unreadable), and whether it takes
    ``**kwargs``."""
    sig = inspect.signature(fn)
    scope = vars(inspect.getmodule(fn) or typing)
    params = {
        p.name: _annotation(p.annotation, scope)
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    }
    return params, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _annotation(annotation: Any, scope: Mapping[str, Any]) -> Any:
    """A parameter's annotation as a type; ``Any`` when it names what only type checkers import."""
    if annotation is inspect.Parameter.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, dict(scope))  # noqa: S307 - a module's own annotation text
    except Exception:
        return Any


def check_arguments(fn: Callable, data: Mapping, where: str, what: str) -> dict[str, Any]:
    """The items of ``data`` checked as keyword arguments of ``fn`` (a class: its constructor): known names,
    values converted to the annotated types."""
    params, open_ended = _parameters(fn)
    if not open_ended:
        check_keys(data, params, where, what)
    return {k: convert(v, params.get(k, Any), k, where) for k, v in data.items()}


def plain(value: Any) -> Any:
    """Nested mappings / sequences (OmegaConf's included, interpolations resolved) as dicts / lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(value[k]) for k in value}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def as_mapping(value: Any, where: str) -> dict[str, Any]:
    """``value`` as a plain dict (``None``: empty), or an error saying a mapping was expected."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SettingsError(f"{_prefix(where)}must be a mapping of settings, not {value!r}")
    return plain(value)


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``; malformed JSON is an error naming ``where`` and the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError(f"{_prefix(where)}malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def read_mapping_file(path: str | Path, where: str | None = None) -> dict[str, Any]:
    """A settings file as a dict: JSON for ``.json``, else YAML; an empty file is ``{}``. Unreadable or malformed
    files, and files that hold no mapping, are errors naming the file (and ``where``, e.g. the variable naming
    it)."""
    path = Path(path)
    where = where or f"file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsError(f"{where}: cannot read it: {e.strerror or e}") from None
    if path.suffix == ".json":
        data = parse_json(text, where) if text.strip() else {}
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SettingsError(f"{where}: malformed YAML: {e}") from None
    return as_mapping(data, where)
