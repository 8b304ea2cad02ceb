"""Token-in/token-out generation with a HF causal LM on CPU, behind verl's LLM-server ``generate`` protocol.

``HFGenerationServer.generate(request_id, prompt_ids=, sampling_params=)`` returns verl's ``TokenOutput``:
the sampled response ids and their log-probs under the sampling distribution's model (raw log-softmax, as
vLLM reports them). Stop strings, ``include_stop_str_in_output`` and ``max_tokens`` behave as in vLLM:
output ends right after the first stop string, at EOS or a stop token id, or after ``max_tokens`` tokens. Requests are
served one at a time (HF ``generate``-style decoding is not re-entrant) off the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import threading

import torch
from verl.workers.rollout.replica import TokenOutput


class HFGenerationServer:
    def __init__(self, model, tokenizer, seed: int = 0):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        self._gen = torch.Generator().manual_seed(seed)

    def _logprobs(self, prompt_ids: list[int], new_ids: list[int]) -> list[float]:
        ids = torch.tensor([prompt_ids + new_ids])
        with torch.no_grad():
            logits = self.model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(new_ids)[:, None])[:, 0].tolist()

    def _sample(self, prompt_ids: list[int], max_tokens: int, params: dict) -> tuple[list[int], list[float]]:
        """Sample with a KV cache; log-probs are the raw (untempered) log-softmax of the chosen tokens."""
        out, logprobs = [], []
        stops = params.get("stop") or []
        # a stop string of L characters ends within the last 4L+1 byte-level tokens: only decode that tail
        tail = 4 * max(map(len, stops), default=0) + 1
        stop_ids = {self.tokenizer.eos_token_id, *(params.get("stop_token_ids") or [])}
        temperature = float(params.get("temperature", 1.0))
        top_k = int(params.get("top_k", -1) or -1)
        top_p = float(params.get("top_p", 1.0))
        with torch.no_grad():
            step = self.model(torch.tensor([prompt_ids]), use_cache=True)
            for _ in range(max_tokens):
                logits = step.logits[0, -1].float()
                if temperature <= 0:
                    nxt = int(logits.argmax())
                else:
                    scaled = logits / temperature
                    if top_k > 0:
                        kth = torch.topk(scaled, min(top_k, scaled.numel())).values[-1]
                        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                    probs = torch.softmax(scaled, -1)
                    if top_p < 1.0:
                        sorted_p, order = probs.sort(descending=True)
                        drop = sorted_p.cumsum(0) - sorted_p > top_p
                        probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0.0))
                    nxt = int(torch.multinomial(probs, 1, generator=self._gen))
                out.append(nxt)
                logprobs.append(float(torch.log_softmax(logits, -1)[nxt]))
                if nxt in stop_ids:
                    break
                recent = self.tokenizer.decode(out[-tail:], skip_special_tokens=False) if stops else ""
                if any(stop in recent for stop in stops):
                    break
                step = self.model(torch.tensor([[nxt]]), past_key_values=step.past_key_values, use_cache=True)
        return out, logprobs

    def _stop_index(self, ids: list[int], params: dict) -> int | None:
        """Number of tokens to keep when a stop string occurs in the decoded ``ids`` (up to and including it)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        ends = [text.find(stop) + len(stop) for stop in params.get("stop") or [] if stop in text]
        if not ends:
            return None
        decoded_len = lambda n: len(self.tokenizer.decode(ids[:n], skip_special_tokens=False))  # noqa: E731
        return bisect.bisect_left(range(len(ids) + 1), min(ends), key=decoded_len)  # shortest covering prefix

    def propose(self, prompt_ids: list[int], max_tokens: int, params: dict) -> tuple[list[int], list[float] | None]:
        """The continuation's token ids (and their log-probs, when known) before stop handling."""
        return self._sample(prompt_ids, max_tokens, params)

    def _generate(self, prompt_ids: list[int], params: dict) -> TokenOutput:
        max_tokens = int(params.get("max_tokens") or 512)
        with self._lock:
            ids, logprobs = self.propose(prompt_ids, max_tokens, params)
            cut = self._stop_index(ids, params)
            if cut is not None:
                ids = ids[:cut]
            ids = ids[:max_tokens]
            if logprobs is None:
                logprobs = self._logprobs(prompt_ids, ids) if ids else []
            logprobs = logprobs[: len(ids)]
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason="completed", num_preempted=0)

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        return await asyncio.to_thread(self._generate, list(prompt_ids), dict(sampling_params))
