"""Helpers of the search agent tests: a byte-level tokenizer, a scripted LLM server, a retrieval server on loopback.

Nothing is downloaded: the tokenizer is built here (one token per UTF-8 byte, so token counts are byte counts),
the LLM server replays scripted text with vLLM's stop-string semantics through verl's ``generate`` protocol, and the
retrieval server is a real aiohttp server speaking Search-R1's ``POST /retrieve`` API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from verl.workers.rollout.replica import TokenOutput

EOS = "<eos>"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A tokenizer with one token per byte plus ``<eos>``; no chat template."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


class ScriptedServer:
    """verl's server-manager ``generate``: each call returns the next scripted text, cut like vLLM would cut it.

    ``script`` maps the decoded text so far (prompt + response) to the text to "sample"; generation stops after the
    first stop string (kept, as ``include_stop_str_in_output`` asks), at ``<eos>`` or after ``max_tokens``.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast, script: Callable[[str], str]):
        self.tokenizer, self.script = tokenizer, script
        self.calls: list[dict[str, Any]] = []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs):
        self.calls.append({"request_id": request_id, "prompt_ids": list(prompt_ids), **sampling_params})
        text = self.script(self.tokenizer.decode(prompt_ids))
        cut = [text.find(s) + len(s) for s in sampling_params.get("stop") or [] if s in text]
        if EOS in text:
            cut.append(text.find(EOS) + len(EOS))
        text = text[: min(cut)] if cut else text
        ids = self.tokenizer.encode(text, add_special_tokens=False)[: sampling_params["max_tokens"]]
        return TokenOutput(token_ids=ids, log_probs=[-0.25] * len(ids), stop_reason="completed")


Handler = Callable[[web.Request], Any]


class RetrievalServer:
    """An aiohttp server on 127.0.0.1 (a free port) whose ``/retrieve`` answers with ``handler``; async context manager.

    The default handler answers every query with the passages of ``passages`` whose text shares a word with it.
    """

    def __init__(self, passages: Sequence[tuple[str, str]] = (), handler: Handler | None = None):
        self.passages = list(passages)
        self.handler = handler or self.search
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def search(self, request: web.Request) -> web.Response:
        body = await request.json()
        result = []
        for query in body["queries"]:
            words = set(query.lower().split())
            hits = [(t, x) for t, x in self.passages if words & set(f"{t} {x}".lower().split())][: body["topk"]]
            result.append(
                [
                    {"document": {"id": t, "contents": f'"{t}"\n{x}'}, "score": 1.0 / (i + 1)}
                    for i, (t, x) in enumerate(hits)
                ]
            )
        return web.json_response({"result": result})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(json.loads(await request.read() or b"null"))
        return await self.handler(request)

    async def __aenter__(self) -> RetrievalServer:
        app = web.Application()
        app.router.add_post("/retrieve", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/retrieve"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
