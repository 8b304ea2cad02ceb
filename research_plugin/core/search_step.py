"""One search step of a trajectory, the same for every framework: what the policy wrote in a generation segment
that stopped at a query close tag goes in, the result block to append comes out.

The text between the last query open tag and that close tag is the query; it is searched with the configured
retriever within ``search_timeout``; the passages are formatted and cut to ``max_result_tokens`` and wrapped in
the dialect's result tags. Nothing raises: an empty query, a query past ``max_searches`` or a failed search
(down, slow, erroring retriever) gets a short notice in the result block instead, and is counted. The adapters
(verl's agent loop, OpenRLHF's agent executor) generate, append the block with loss mask 0, and report
:attr:`SearchStep.counters` to the reward and the logs.

Settings (:class:`SearchAgentConfig`) come from the framework's configuration, later sources winning.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..retrieval import SearchResult, built_retriever, get_retriever
from .dialects import DIALECTS, Dialect, extract_query, format_passages, get_dialect, result_block, stopped_at_query
from .settings import as_mapping, check_fields, limits
from .tokenizing import decode, encode_lines, kept_ids

logger = logging.getLogger(__name__)


def _check_retriever(spec: Any, where: str) -> Any:
    from ..retrieval import check_spec

    return check_spec(spec, where)


PROMPT_FORMATS = ("auto", "chat", "raw")


@dataclass(frozen=True)
class SearchAgentConfig:
    dialect: str = field(default="research", metadata=limits(choices=lambda: DIALECTS))
    top_k: int = field(default=5, metadata=limits(ge=1))
    max_searches: int = field(default=8, metadata=limits(ge=0))
    """Searches answered with passages per trajectory; later queries get a notice instead."""
    max_result_tokens: int = field(default=512, metadata=limits(ge=1))
    """Passage text per result block is cut to this many tokens."""
    max_query_chars: int = field(default=512, metadata=limits(ge=1))
    search_timeout: float = field(default=60.0, metadata=limits(gt=0))
    """Seconds one search may take before it is recorded as failed."""
    retriever: Any = field(default="two_hop", metadata=limits(check=_check_retriever))
    """A retriever spec: ``"two_hop"`` (the bundled corpus), an ``http(s)://.../retrieve`` URL, or a mapping
    (``research_plugin.retrieval``)."""
    prompt_format: str = field(default="auto", metadata=limits(choices=PROMPT_FORMATS))
    """``chat`` (apply the chat template), ``raw`` (concatenate message texts, for base-model templates) or ``auto``."""
    mask_results: bool = True
    """Result tokens get ``response_mask`` 0 (no loss, KL or entropy). ``False`` trains on them as if the policy had
    written them: Search-R1's ablation of retrieved-token masking, and a negative control (verl only)."""

    @classmethod
    def merged(
        cls, *sources: Mapping | None, where: str | Sequence[str] = "search_agent settings"
    ) -> SearchAgentConfig:
        """The defaults, updated by each mapping in turn (config objects included), each checked
        (:mod:`.settings`): an unknown key, a value of the wrong type or out of range raises
        :class:`~.settings.SettingsError` (a ``ValueError``) naming it and where it came from: ``where`` labels all
        sources, or one label per source ("file agent.yaml: search_agent", "row 17: extra_info.search")."""
        labels = [where] * len(sources) if isinstance(where, str) else list(where)
        if len(labels) != len(sources):
            raise ValueError(f"merged: {len(sources)} sources but {len(labels)} labels")
        values: dict[str, Any] = {}
        for src, label in zip(sources, labels):
            values.update(check_fields(cls, as_mapping(src, label), label, "search_agent settings"))
        return cls(**values)


@dataclass
class SearchCounters:
    """What a trajectory's searches did; every field goes to the reward (``extra_info``) and the logs."""

    num_searches: int = 0
    num_failed_searches: int = 0
    num_invalid_queries: int = 0
    retrieved_tokens: int = 0
    """Tokens of the result blocks appended (masked out of the loss)."""
    retrieval_s: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


class CPUMeter:
    """The CPU one coroutine spends itself: its thread's CPU time outside the awaits wrapped in :meth:`wait` (while
    it waits, the event loop runs other coroutines on the same thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since = time.thread_time()

    async def wait(self, awaitable: Any) -> Any:
        self.seconds += time.thread_time() - self._since
        try:
            return await awaitable
        finally:
            self._since = time.thread_time()

    def total(self) -> float:
        """Seconds so far (the meter keeps running)."""
        now = time.thread_time()
        self.seconds += now - self._since
        self._since = now
        return self.seconds


class SearchStep:
    """The search steps of one trajectory (see the module docstring); ``tokenizer`` is the policy's (HF). The
    adapter's own awaits go through :attr:`cpu` too, so it measures the trajectory's agent-side CPU."""

    def __init__(self, cfg: SearchAgentConfig, tokenizer: Any, cpu: CPUMeter | None = None) -> None:
        self.cfg = cfg
        self.dialect: Dialect = get_dialect(cfg.dialect)
        self.tokenizer = tokenizer
        self.counters = SearchCounters()
        self.cpu = cpu or CPUMeter()
        self.results = 0
        """Result blocks appended."""

    def wants_search(self, segment: str) -> bool:
        """Whether a generation segment ended on the dialect's query close tag (else the trajectory is done)."""
        return stopped_at_query(segment, self.dialect)

    async def result_block(self, segment: str) -> str:
        """The result block answering the query that closes ``segment``: passages, or a notice saying why not."""
        body, passages = await self._body(segment)
        return result_block(self._cut(body) if passages else body, self.dialect)

    async def result_ids(self, segment: str) -> list[int]:
        """:meth:`result_block`'s token ids, kept per tokenizer and process by the block's text before cutting
        (:func:`.tokenizing.kept_ids`)."""
        body, passages = await self._body(segment)
        key = (self.dialect.name, self.cfg.max_result_tokens if passages else None, body)
        return kept_ids(self.tokenizer, key, lambda: self._block_ids(body, passages))

    def _block_ids(self, body: str, passages: bool) -> list[int]:
        ids = encode_lines(self.tokenizer, result_block(body, self.dialect))
        # a block within max_result_tokens holds a body within it (the tags add tokens): only a longer one is cut
        if passages and len(ids) > self.cfg.max_result_tokens:
            cut = self._cut(body)
            if cut is not body:
                ids = encode_lines(self.tokenizer, result_block(cut, self.dialect))
        return ids

    def appended(self, num_tokens: int) -> None:
        """Record that a result block of ``num_tokens`` tokens went into the trajectory."""
        self.results += 1
        self.counters.retrieved_tokens += num_tokens

    async def _body(self, segment: str) -> tuple[str, bool]:
        """The block's text before cutting, and whether it holds passages (else: a notice, never cut)."""
        d, cfg, c = self.dialect, self.cfg, self.counters
        query = extract_query(segment, d)
        if not query:
            c.num_invalid_queries += 1
            return f"No query found. Write a query as {d.query_open} query {d.query_close}.", False
        if c.num_searches >= cfg.max_searches:
            return f"Search limit of {cfg.max_searches} reached. Answer with what you know.", False
        c.num_searches += 1
        result = await self._retrieve(query[: cfg.max_query_chars])
        if result.error is not None:
            c.num_failed_searches += 1
            logger.warning("search failed for query %r: %s", query[:80], result.error)
            return "Search failed. Try again or answer with what you know.", False
        if not result.passages:
            return "No results.", False
        return format_passages(result.passages, self.dialect), True

    def _cut(self, body: str) -> str:
        """``body`` cut to ``max_result_tokens``."""
        ids = encode_lines(self.tokenizer, body)
        if len(ids) <= self.cfg.max_result_tokens:
            return body
        return decode(self.tokenizer, ids[: self.cfg.max_result_tokens]) + " ..."

    async def _retrieve(self, query: str) -> SearchResult:
        """One search, bounded in time; any failure becomes an error result, never an exception."""
        start = time.perf_counter()
        try:
            retriever = built_retriever(self.cfg.retriever)
            if retriever is None:  # the first search of this spec in this process builds it, off the event loop
                retriever = await self.cpu.wait(asyncio.to_thread(get_retriever, self.cfg.retriever))
            search = asyncio.wait_for(retriever.search([query], self.cfg.top_k), self.cfg.search_timeout)
            (result,) = await self.cpu.wait(search)
        except asyncio.TimeoutError:
            result = SearchResult([], error=f"timed out after {self.cfg.search_timeout:g}s")
        except Exception as e:  # the step goes on; the failure is recorded in the trajectory
            result = SearchResult([], error=f"{type(e).__name__}: {e}"[:200])
        self.counters.retrieval_s += time.perf_counter() - start
        return result
