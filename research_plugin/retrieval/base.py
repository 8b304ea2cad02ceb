"""Core retrieval types: passages, per-query results, the async ``Retriever`` interface, corpus reading."""

from __future__ import annotations

import abc
import asyncio
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_MAX_REPORTED_BAD_LINES = 10
T = TypeVar("T")


def loop_local(table: dict[asyncio.AbstractEventLoop, T], make: Callable[[asyncio.AbstractEventLoop], T]) -> T:
    """The running event loop's entry of ``table``, made by ``make(loop)`` on its first use on that loop; entries
    of loops that have closed are dropped then. A retriever is process-wide (:func:`get_retriever`) while asyncio
    objects belong to one loop, and one process may run several (``asyncio.run`` again, verl's workers)."""
    loop = asyncio.get_running_loop()
    entry = table.get(loop)
    if entry is None:
        for dead in [other for other in table if other.is_closed()]:
            del table[dead]
        entry = table[loop] = make(loop)
    return entry


@dataclass
class Passage:
    """One retrievable unit of text (a wiki-18 / FlashRAG corpus row)."""

    id: str
    title: str
    text: str
    score: float | None = None

    @classmethod
    def from_contents(cls, id: str, contents: str, score: float | None = None) -> Passage:
        """Parse the wiki-18 ``contents`` field, ``"Title"\\ntext``; never raises.

        A first line wrapped in double quotes is the title (quotes removed); an unquoted first line followed by
        more lines is taken as the title as is; a single line is all text (empty title).
        """
        first, newline, rest = (contents or "").partition("\n")
        if not newline:
            return cls(id, "", first, score)
        stripped = first.strip()
        if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
            stripped = stripped[1:-1]
        return cls(id, stripped, rest, score)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], score: float | None = None) -> Passage:
        """Build from ``{"id", "contents"}`` or ``{"id", "title", "text"}``; ``id`` defaults to ""."""
        pid = str(record.get("id", ""))
        if isinstance(record.get("contents"), str):
            return cls.from_contents(pid, record["contents"], score)
        if isinstance(record.get("text"), str):
            return cls(pid, str(record.get("title") or ""), record["text"], score)
        raise ValueError("record has neither a 'contents' nor a 'text' string field")

    @property
    def contents(self) -> str:
        """The wiki-18 form, ``"Title"\\ntext`` (inverse of :meth:`from_contents`)."""
        return f'"{self.title}"\n{self.text}'


@dataclass
class SearchResult:
    """The passages found for one query, best first; ``error`` says why there are none when the backend failed."""

    passages: list[Passage]
    error: str | None = None


class Retriever(abc.ABC):
    """Async batch retriever. Subclasses implement :meth:`_search`; :meth:`search` checks the arguments.

    Contract: one :class:`SearchResult` per query, in order; a query repeated in one call is searched once and
    every copy gets the same answer. Invalid arguments (``top_k <= 0``) raise ``ValueError``; remote backends report
    failures as ``SearchResult([], error=...)`` instead of raising.
    """

    name: str = "retriever"
    parallel_batches: int = 1
    """How many batches the backend searches at once to advantage: more than 1 when its stages run on different
    devices (a query encoder on a GPU while the index is scanned on the CPU), so a server keeps that many batches
    in flight."""

    async def search(self, queries: Sequence[str], top_k: int) -> list[SearchResult]:
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of strings, not a single string")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        if not queries:
            return []
        unique = list(dict.fromkeys(queries))
        results = await self._search(unique, top_k)
        if len(results) != len(unique):
            raise RuntimeError(f"{self.describe()} returned {len(results)} results for {len(unique)} queries")
        if len(unique) == len(queries):
            return results
        found = dict(zip(unique, results))
        return [SearchResult(list(found[q].passages), found[q].error) for q in queries]

    @abc.abstractmethod
    async def _search(self, queries: list[str], top_k: int) -> list[SearchResult]:
        """Retrieve for a non-empty query list with a valid ``top_k``."""

    async def close(self) -> None:
        """Release resources (connections, ...). The default has nothing to release."""

    def describe(self) -> str:
        """A one-line description for logs (never includes secrets)."""
        return self.name


def iter_corpus(path: str | Path) -> Iterator[Passage]:
    """Stream the passages of a jsonl corpus; bad lines are skipped, counted and logged with their line numbers.

    Raises ``ValueError`` once the file is exhausted if it held no valid row.
    """
    good = bad = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                passage = Passage.from_record(row)
            except ValueError as e:
                bad += 1
                if bad <= _MAX_REPORTED_BAD_LINES:
                    logger.warning("%s:%d: skipping bad corpus line: %s", path, line_no, e)
                continue
            good += 1
            yield passage
    if bad:
        logger.warning("%s: skipped %d bad line(s), kept %d passage(s)", path, bad, good)
    if not good:
        raise ValueError(f"corpus {path} has no valid rows")
