"""The backends measured: a real index, or a backend of set latency (a GPU box's regime on any machine)."""

from __future__ import annotations

from typing import Any

# a backend of set latency: the regime of a GPU box, reproduced on any machine


def parse_latency(text: str) -> list[tuple[float, float]]:
    """``"FIXED_MS,PER_QUERY_MS[;FIXED_MS,PER_QUERY_MS]"`` -> stages."""
    stages = [tuple(float(x) for x in part.split(",")) for part in text.split(";") if part.strip()]
    if not stages or any(len(s) != 2 or min(s) < 0 for s in stages):
        raise ValueError(f"--latency takes FIXED_MS,PER_QUERY_MS[;FIXED_MS,PER_QUERY_MS], not {text!r}")
    return stages  # type: ignore[return-value]


def make_backend(spec: dict[str, Any]) -> Any:
    """The backend a spec names: the latency stand-in (``research_plugin.retrieval.latency``) or a real retriever."""
    from research_plugin.retrieval import build_retriever

    return build_retriever(spec)
