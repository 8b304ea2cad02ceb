"""The policy behind verl's LLM-server ``generate`` protocol: an OpenAI-compatible completions endpoint (what
``vllm serve`` and SGLang expose) or a local HF model (:class:`~research_plugin.verl.hf_generation.HFGenerationServer`).

Either object is handed to verl's ``AgentLoopWorker`` as its LLM client, so the search agent loop of training
drives it unchanged.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from verl.workers.rollout.replica import TokenOutput

from .http_json import api_url, post_json


class CompletionsPolicy:
    """verl's ``generate(request_id, prompt_ids=, sampling_params=)`` over ``POST /v1/completions``.

    The prompt goes out as token ids (``prompt_as="ids"``, exact) or as their decoded text (``"text"``, for servers
    that take only strings). Stop strings, ``include_stop_str_in_output``, ``stop_token_ids``, ``max_tokens``,
    ``temperature``, ``top_p`` and ``top_k`` are passed through (the non-OpenAI ones as vLLM / SGLang extras).
    The response's token ids are used when the server returns them (vLLM's ``return_token_ids``); otherwise the
    text is tokenised here, with a stop string the server trimmed (SGLang's ``matched_stop``, vLLM's
    ``stop_reason``) put back. Failed requests are retried (bounded) and then raise
    :class:`~.http_json.RequestFailed`. Log-probs are not requested.

    ``context_length`` (the served model's ``max_model_len``, read from ``GET /v1/models``) bounds each request's
    ``max_tokens`` to what its prompt leaves of the context, so a response budget larger than the server's context
    never turns into HTTP 400s; the first time it does, one line says so. A response cut by the server's limit is
    reported to the agent loop (``finish_reason: length``), which ends the trajectory as truncated.
    """

    def __init__(
        self,
        url: str,
        model: str,
        tokenizer: Any,
        *,
        prompt_as: str = "ids",
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        context_length: int | None = None,
    ) -> None:
        if prompt_as not in ("ids", "text"):
            raise ValueError(f"prompt_as must be 'ids' or 'text', not {prompt_as!r}")
        self.url = api_url(url, "completions")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_as = prompt_as
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None
        self.context_length = context_length
        self._said_bounded = False

    def _max_tokens(self, prompt_ids: list[int], params: dict[str, Any]) -> int:
        """The request's ``max_tokens``, bounded by what the prompt leaves of the server's context."""
        wanted = int(params["max_tokens"])
        if self.context_length is None or len(prompt_ids) + wanted <= self.context_length:
            return wanted
        if not self._said_bounded:
            self._said_bounded = True
            print(
                f"eval: {self.model} serves a context of {self.context_length} tokens; requests ask for at most what "
                f"their prompt leaves of it (here {max(0, self.context_length - len(prompt_ids))} of the "
                f"{wanted} tokens left in the response budget)"
            )
        return self.context_length - len(prompt_ids)

    def _payload(self, prompt_ids: list[int], params: dict[str, Any]) -> dict[str, Any]:
        prompt: list[int] | str = list(prompt_ids)
        if self.prompt_as == "text":
            prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": self._max_tokens(prompt_ids, params),
            "temperature": float(params.get("temperature", 1.0)),
            "top_p": float(params.get("top_p", 1.0)),
            "stop": list(params.get("stop") or []),
            "include_stop_str_in_output": bool(params.get("include_stop_str_in_output", False)),
            "return_token_ids": True,
        }
        if int(params.get("top_k") or -1) > 0:
            payload["top_k"] = int(params["top_k"])
        if params.get("stop_token_ids"):
            payload["stop_token_ids"] = [int(t) for t in params["stop_token_ids"]]
        return payload

    def _token_ids(self, data: Any, params: dict[str, Any]) -> list[int]:
        """The response token ids of a completions answer; ``ValueError`` when it has the wrong shape."""
        try:
            choice = data["choices"][0]
            text = choice["text"]
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"malformed completions response: {str(data)[:300]}") from e
        if not isinstance(text, str):
            raise ValueError(f"completions response text is {type(text).__name__}, not a string")
        ids = choice.get("token_ids")
        stops = list(params.get("stop") or [])
        matched = choice.get("matched_stop", choice.get("stop_reason"))
        if (
            params.get("include_stop_str_in_output")
            and choice.get("finish_reason") == "stop"
            and matched in stops
            and not text.endswith(matched)
        ):
            text, ids = text + matched, None  # the server trimmed the stop string: put it back
        if not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        return ids[: int(params["max_tokens"])]

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any):
        payload = self._payload(prompt_ids, sampling_params)
        if payload["max_tokens"] <= 0:  # the prompt fills the server's context: nothing more can be generated
            return TokenOutput(token_ids=[], stop_reason="completed", extra_fields={"finish_reason": "length"})
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        data = await post_json(
            self._session, self.url, payload, headers=self._headers, max_retries=self.max_retries, backoff=self.backoff
        )
        ids = self._token_ids(data, {**sampling_params, "max_tokens": payload["max_tokens"]})
        finish = data["choices"][0].get("finish_reason")
        extra = {"finish_reason": "length"} if finish == "length" else {}
        return TokenOutput(token_ids=ids, stop_reason="completed", extra_fields=extra)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


CONTEXT_KEYS = ("max_model_len", "context_length", "max_context_length")
"""Where OpenAI-compatible servers put a model's context in ``/v1/models`` (vLLM and SGLang: ``max_model_len``)."""


def served_models(url: str, api_key: str | None = None, timeout: float = 30.0) -> dict[str, int | None]:
    """``{model id: its context length, or None}`` from ``GET /v1/models``; ``ValueError`` when it cannot be had."""
    request = urllib.request.Request(api_url(url, "models"))
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data = json.loads(resp.read())
        cards = {str(m["id"]): m for m in data["data"]}
    except (OSError, ValueError, KeyError, TypeError) as e:  # URLError is an OSError
        raise ValueError(f"cannot list the models of {url}: {e}") from e
    return {model: _context(card) for model, card in cards.items()}


def _context(card: Any) -> int | None:
    for key in CONTEXT_KEYS:
        value = card.get(key) if isinstance(card, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass
class Policy:
    server: Any
    """An object with verl's ``async generate(request_id, *, prompt_ids, sampling_params)``."""
    model_dir: Path
    """Local HF folder (config + tokenizer) that verl's workers load the tokenizer from."""
    description: str


def load_policy(
    model: str,
    *,
    tokenizer: str | None = None,
    served_model: str | None = None,
    prompt_as: str = "ids",
    api_key_env: str | None = None,
    timeout: float = 600.0,
    max_retries: int = 3,
    seed: int = 0,
) -> Policy:
    """``model`` is an ``http(s)://`` completions endpoint or a local HF model folder.

    For an endpoint, ``tokenizer`` is a local folder with the served model's config and tokenizer files (weights
    are not needed); by default the served model's id, when that is a local folder. ``served_model`` defaults to
    the first model the endpoint lists. The API key, if any, is read from the environment variable ``api_key_env``.
    """
    from transformers import AutoTokenizer

    if model.startswith(("http://", "https://")):
        api_key = os.environ.get(api_key_env) if api_key_env else None
        try:
            models = served_models(model, api_key)
        except ValueError:
            if served_model is None or tokenizer is None:
                raise
            models = {}  # a server without /v1/models: named explicitly, its context is not known
        if served_model is None:
            if not models:
                raise ValueError(f"{model} serves no models")
            served_model = next(iter(models))
        tokenizer = tokenizer or served_model
        model_dir = Path(tokenizer)
        if not (model_dir / "config.json").is_file():
            raise ValueError(
                f"--tokenizer must be a local folder with the served model's config.json and tokenizer files "
                f"(weights are not needed); {tokenizer!r} is not"
            )
        tok = AutoTokenizer.from_pretrained(model_dir)
        server = CompletionsPolicy(
            model,
            served_model,
            tok,
            prompt_as=prompt_as,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            context_length=models.get(served_model),
        )
        return Policy(server, model_dir, f"{served_model} at {server.url}")

    from transformers import AutoModelForCausalLM

    from ..checkpoints import resolve_model_dir
    from ..verl.hf_generation import HFGenerationServer

    try:
        model_dir = resolve_model_dir(model)
    except ValueError as e:
        raise ValueError(f"--model must be an http(s):// completions endpoint, a local HF model folder or a verl "
                         f"checkpoint folder: {e}") from None  # fmt: skip
    server = HFGenerationServer(
        AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), seed=seed
    )
    return Policy(server, model_dir, f"local HF model {model_dir}")


async def close_policy(server: Any) -> None:
    """Close what the policy holds open on the running event loop (HTTP sessions)."""
    close = getattr(server, "aclose", None)
    if close is not None:
        await close()
