"""Local stand-ins for what cannot run here, speaking the real OpenAI-compatible HTTP APIs on loopback:

* ``FakeCompletions``: ``POST /v1/completions`` and ``GET /v1/models`` as ``vllm serve`` answers them (token-id
  prompts, ``stop``, ``include_stop_str_in_output``, ``return_token_ids``, ``stop_reason``, ``max_model_len`` in the
  model card and HTTP 400 for a request that does not fit it), or, with
  ``vllm_extras=False``, as a server that ignores vLLM's extras (stop strings trimmed, SGLang's ``matched_stop``,
  no token ids). The continuation comes from a backend: the tiny HF model (:func:`hf_backend`) or a script.
* ``FakeChat``: ``POST /v1/chat/completions`` for the LLM judge.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .local_http import LocalApp

Backend = Callable[[list[int], dict], Awaitable[list[int]]]
"""(prompt ids, sampling params) -> generated ids, ending right after a stop string / EOS as vLLM stops."""


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)


def hf_backend(server) -> Backend:
    """Generation by a ``HFGenerationServer`` (the tiny model): real tokens, vLLM stop semantics."""

    async def generate(prompt_ids: list[int], params: dict) -> list[int]:
        keep = ("temperature", "top_p", "top_k", "max_tokens", "stop", "stop_token_ids")
        sampling = {k: params[k] for k in keep if k in params}
        out = await server.generate("fake", prompt_ids=prompt_ids, sampling_params={**sampling, "logprobs": False})
        return list(out.token_ids)

    return generate


def scripted_backend(tokenizer, script: Callable[[str], str]) -> Backend:
    """Text from ``script(decoded prompt)``, cut after the first stop string, as a policy that follows orders."""

    async def generate(prompt_ids: list[int], params: dict) -> list[int]:
        text = script(tokenizer.decode(prompt_ids, skip_special_tokens=False))
        ends = [text.find(s) + len(s) for s in params.get("stop") or [] if s in text]
        if ends:
            text = text[: min(ends)]
        return tokenizer.encode(text, add_special_tokens=False)[: params["max_tokens"]]

    return generate


class FakeCompletions(LocalApp):
    def __init__(
        self,
        tokenizer,
        model: str,
        backend: Backend,
        *,
        vllm_extras: bool = True,
        api_key=None,
        max_model_len: int = 32768,
        advertise_context: bool = True,
    ) -> None:
        self.tokenizer, self.model, self.backend = tokenizer, model, backend
        self.vllm_extras, self.api_key = vllm_extras, api_key
        self.max_model_len, self.advertise_context = max_model_len, advertise_context
        self.requests: list[dict] = []
        self.fail_next = 0  # answer this many requests with 503
        self._ids = itertools.count()
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        super().__init__(app)

    def _unauthorised(self, request: web.Request) -> bool:
        return bool(self.api_key) and request.headers.get("Authorization") != f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if self._unauthorised(request):
            return _error(401, "Unauthorized", "authentication_error")
        card = {"id": self.model, "object": "model", "created": int(time.time()), "owned_by": "vllm"}
        if self.advertise_context:
            card["max_model_len"] = self.max_model_len
        return web.json_response({"object": "list", "data": [card]})

    async def _completions(self, request: web.Request) -> web.Response:
        if self._unauthorised(request):
            return _error(401, "Unauthorized", "authentication_error")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON")
        self.requests.append(body)
        if self.fail_next > 0:
            self.fail_next -= 1
            return _error(503, "server overloaded", "server_error")
        if body.get("model") != self.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt, max_tokens = body.get("prompt"), body.get("max_tokens", 16)
        if isinstance(prompt, str):
            prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            prompt_ids = prompt
        else:
            return _error(400, "prompt must be a string or a non-empty list of token ids")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be a positive integer")
        if len(prompt_ids) + max_tokens > self.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, {max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        params = {**body, "stop": stops, "max_tokens": max_tokens}
        if not self.vllm_extras:
            params.pop("stop_token_ids", None)
        ids = await self.backend(prompt_ids, params)

        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hits = sorted((text.find(s), s) for s in stops if s in text)
        matched = hits[0][1] if hits else None
        stop_ids = {self.tokenizer.eos_token_id, *(params.get("stop_token_ids") or [])}
        finish = "stop" if matched or (ids and ids[-1] in stop_ids) else "length"
        include = self.vllm_extras and body.get("include_stop_str_in_output", False)
        if matched:
            text = text[: hits[0][0] + (len(matched) if include else 0)]
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if self.vllm_extras:
            choice["stop_reason"] = matched
            if body.get("return_token_ids"):
                choice["token_ids"] = ids
        else:
            choice["matched_stop"] = matched
        usage = {"prompt_tokens": len(prompt_ids), "completion_tokens": len(ids)}
        return web.json_response(
            {
                "id": f"cmpl-{next(self._ids)}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [choice],
                "usage": {**usage, "total_tokens": sum(usage.values())},
            }
        )


class FakeChat(LocalApp):
    """A chat-completions judge: ``decide(user message) -> reply text``; ``status`` other than 200 fails requests."""

    def __init__(self, decide: Callable[[str], str], *, model: str = "judge-model") -> None:
        self.decide, self.model = decide, model
        self.status = 200
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        super().__init__(app)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.status != 200:
            return _error(self.status, "upstream failure", "server_error")
        if body.get("model") != self.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or messages[-1].get("role") != "user":
            return _error(400, "messages must end with a user message")
        reply = self.decide(messages[-1]["content"])
        message = {"role": "assistant", "content": reply}
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51},
            }
        )


def same_meaning(user_message: str) -> str:
    """A judge that says yes when the prediction contains one of the gold answers (case-insensitively), in the
    form the prompt asks for (yes/no, ReSearch's JSON judgement, R1-Searcher's True/False)."""
    golds = re.search(r"^(?:Gold|Correct|Golden) answers?: (.*)$", user_message, re.M).group(1).split(" | ")
    prediction = re.search(r"^Predicted answer: (.*)$", user_message, re.M).group(1)
    same = any(g.lower() in prediction.lower() for g in golds)
    if '"judgement"' in user_message:
        verdict = "correct" if same else "incorrect"
        return f'The prediction names the place. {{"rationale": "compared", "judgement": "{verdict}"}}'
    if "Reply True" in user_message:
        return "True" if same else "False"
    return "Yes." if same else "no"
