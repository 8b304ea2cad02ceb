"""LLM-as-judge: does a predicted answer mean the same as any gold answer? Asked of an OpenAI-compatible
``/v1/chat/completions`` endpoint; verdicts are cached on disk, one JSON file per (model, prompt, question, golds,
prediction), so a rerun asks nothing twice. A failed request is recorded (bounded retries), never raised.

The question is asked as one of :data:`.protocols.JUDGE_PROMPTS`: ``yes_no`` (a one-word verdict), ``research`` (as
ReSearch's judge is asked: reason first, then a JSON judgement ``correct`` / ``incorrect``) or ``r1_searcher``
(as R1-Searcher's: ``True`` / ``False``, the prediction must carry the gold answer's meaning and key facts). The
wording is ours; the protocols are the papers'."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from tqdm import tqdm

from .http_json import RequestFailed, api_url, post_json
from .protocols import JUDGE_PROMPTS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    value: float | None
    """1.0 (same meaning), 0.0 (not), or None when the judge could not be had."""
    error: str | None = None
    source: str = "judge"
    """Where the verdict came from: ``judge`` (asked now), ``cache``, ``no answer`` (0 without asking), ``error``."""


@dataclass(frozen=True)
class JudgeItem:
    question: str
    golds: Sequence[str]
    prediction: str | None


class LLMJudge:
    """Judge predictions with ``model`` at ``endpoint`` (``http://host[:port][/v1]``); see the module docstring.

    The API key is read from the environment variable ``api_key_env`` (none is sent when it is unset); it is
    sent only in the ``Authorization`` header and appears in no message, log line or cache file.
    """

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        cache_dir: str | os.PathLike[str],
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 8,
        prompt: str = "yes_no",
    ) -> None:
        if prompt not in JUDGE_PROMPTS:
            raise ValueError(f"judge prompt must be one of {sorted(JUDGE_PROMPTS)}, not {prompt!r}")
        self.url = api_url(endpoint, "chat/completions")
        self.model = model
        self.prompt = JUDGE_PROMPTS[prompt]
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = concurrency
        key = os.environ.get(api_key_env, "")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def _cache_path(self, item: JudgeItem) -> Path:
        parts = [self.model, item.question, sorted(item.golds), item.prediction]
        if self.prompt.name != "yes_no":  # the first prompt's cache files keep their names
            parts.append(self.prompt.name)
        key = json.dumps(parts, ensure_ascii=False)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def _cached(self, path: Path) -> Verdict | None:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))["verdict"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning("ignoring unreadable judge cache file %s: %s", path, e)
            return None
        return Verdict(float(value), source="cache") if value in (0, 1) else None

    def _store(self, path: Path, item: JudgeItem, verdict: float, reply: str) -> None:
        """Write one cache file atomically; a failure is logged, not raised."""
        record = {
            "model": self.model,
            "prompt": self.prompt.name,
            "question": item.question,
            "golds": list(item.golds),
            "prediction": item.prediction,
            "verdict": verdict,
            "reply": reply,
        }
        tmp = ""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False)
            os.replace(tmp, path)
        except OSError as e:
            logger.warning("could not write judge cache file %s: %s", path, e)
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _payload(self, item: JudgeItem) -> dict:
        p = self.prompt
        user = p.user.format(question=item.question, golds=" | ".join(item.golds), prediction=item.prediction)
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": p.system}, {"role": "user", "content": user}],
            "temperature": 0,
            "max_tokens": p.max_tokens,
        }

    async def _judge(self, session: aiohttp.ClientSession, item: JudgeItem) -> Verdict:
        if item.prediction is None or not item.prediction.strip():
            return Verdict(0.0, source="no answer")  # no answer means the same as no gold answer
        path = self._cache_path(item)
        cached = self._cached(path)
        if cached is not None:
            return cached
        try:
            data = await post_json(
                session,
                self.url,
                self._payload(item),
                headers=self._headers,
                max_retries=self.max_retries,
                backoff=self.backoff,
            )
            reply = data["choices"][0]["message"]["content"]
        except RequestFailed as e:
            return Verdict(None, str(e), "error")
        except (KeyError, IndexError, TypeError):
            return Verdict(None, f"malformed chat completions response: {str(data)[:200]}", "error")
        verdict = self.prompt.parse(reply) if isinstance(reply, str) else None
        if verdict is None:
            return Verdict(None, f"judge reply holds no {self.prompt.name} verdict: {str(reply)[:100]!r}", "error")
        self._store(path, item, verdict, reply)
        return Verdict(verdict)

    def judge_all(self, items: Sequence[JudgeItem], progress: bool = True) -> list[Verdict]:
        """One verdict per item, in order, at most ``concurrency`` requests at a time."""

        async def go() -> list[Verdict]:
            limit = asyncio.Semaphore(self.concurrency)
            bar = tqdm(total=len(items), desc="judge", unit="q", disable=not progress)

            async def one(session: aiohttp.ClientSession, item: JudgeItem) -> Verdict:
                async with limit:
                    verdict = await self._judge(session, item)
                bar.update(1)
                return verdict

            timeout = aiohttp.ClientTimeout(total=self.timeout)
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    return await asyncio.gather(*(one(session, item) for item in items))
            finally:
                bar.close()

        return asyncio.run(go())
