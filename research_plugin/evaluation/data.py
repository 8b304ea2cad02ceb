"""Rows of the parquet files ``research-plugin prepare`` writes (verl's RL dataset schema), checked and keyed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.answer_metrics import as_gold_list

_MAX_REPORTED = 10


@dataclass(frozen=True)
class EvalRow:
    key: str
    """``<file name>#<row number>``: what a rerun uses to find the rows it already has."""
    data_source: str
    prompt: list[dict[str, Any]] | str
    """Chat messages (instruct) or one string (base-model template), as verl's ``raw_prompt``."""
    golds: list[str]
    extra_info: dict[str, Any]
    question: str


def _question(prompt: list[dict[str, Any]] | str, extra_info: Mapping[str, Any]) -> str:
    if isinstance(extra_info.get("question"), str):
        return extra_info["question"]
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _row(key: str, raw: Mapping[str, Any]) -> EvalRow:
    """One checked row; ``ValueError`` says what is wrong with it."""
    source = raw.get("data_source")
    if not isinstance(source, str) or not source:
        raise ValueError("no data_source")
    prompt = raw.get("prompt")
    if isinstance(prompt, Sequence) and not isinstance(prompt, str):
        if not prompt or not all(isinstance(m, Mapping) and isinstance(m.get("content"), str) for m in prompt):
            raise ValueError("prompt must be a non-empty list of {role, content} messages or a string")
        prompt = [dict(m) for m in prompt]
    elif not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("no prompt")
    reward_model = raw.get("reward_model")
    golds = as_gold_list(reward_model.get("ground_truth")) if isinstance(reward_model, Mapping) else []
    if not golds:
        raise ValueError("no reward_model.ground_truth")
    extra_info = raw.get("extra_info")
    if extra_info is None:
        extra_info = {}
    if not isinstance(extra_info, Mapping):
        raise ValueError("extra_info must be a mapping")
    extra_info = {k: v for k, v in extra_info.items() if v is not None}
    return EvalRow(key, source, prompt, golds, extra_info, _question(prompt, extra_info))


def load_rows(paths: Sequence[str | Path], limit: int | None = None) -> list[EvalRow]:
    """Rows of each parquet file in order (the first ``limit`` of each file when given).

    Raises ``ValueError`` listing the bad rows (file and row number) when any row lacks what evaluation needs.
    """
    import pyarrow.parquet as pq

    rows: list[EvalRow] = []
    errors: list[str] = []
    names: dict[str, Path] = {}
    for path in map(Path, paths):
        if path.name in names:
            raise ValueError(f"two data files are named {path.name!r} ({names[path.name]}, {path}): rename one")
        names[path.name] = path
        try:
            records = pq.read_table(path).to_pylist()
        except (OSError, ValueError) as e:  # pyarrow's errors derive from these
            raise ValueError(f"cannot read {path} as parquet: {e}") from e
        for i, raw in enumerate(records[:limit] if limit is not None else records):
            try:
                rows.append(_row(f"{path.name}#{i}", raw))
            except ValueError as e:
                errors.append(f"{path}: row {i}: {e}")
    if errors:
        listed = "\n  ".join(errors[:_MAX_REPORTED])
        more = f"\n  ... and {len(errors) - _MAX_REPORTED} more" if len(errors) > _MAX_REPORTED else ""
        raise ValueError(f"{len(errors)} bad row(s):\n  {listed}{more}")
    return rows
