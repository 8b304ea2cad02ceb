"""Token-in/token-out generation with a HF causal LM (CPU, or the device its weights are on), behind verl's
LLM-server ``generate`` protocol.

``HFGenerationServer.generate(request_id, prompt_ids=, sampling_params=)`` returns verl's ``TokenOutput``:
the sampled response ids and their log-probs under the distribution they were sampled from (vLLM's
``processed_logprobs``, verl's default: after temperature, top-k and top-p; ``raw_logprobs``: the model's
log-softmax). Stop strings, ``include_stop_str_in_output`` and ``max_tokens`` behave as in vLLM:
output ends right after the first stop string, at EOS or a stop token id, or after ``max_tokens`` tokens.

Concurrent requests are batched: one thread owns the model; each time it is free it takes every waiting request
(up to ``max_batch_size``), left-pads the prompts and decodes them together with one KV cache, each row ending
on its own stop condition. ``abort()`` ends the running batch early (its outputs are marked ``aborted``);
``load_weights`` swaps weights between batches, never inside one. Decoding (``propose_batch``) needs no verl; only
``generate`` builds verl's ``TokenOutput``.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import queue
import threading
from dataclasses import dataclass

import torch


@dataclass
class Request:
    prompt_ids: list[int]
    params: dict
    max_tokens: int


class HFGenerationServer:
    def __init__(
        self, model, tokenizer, seed: int = 0, max_batch_size: int = 64, logprobs_mode: str = "processed_logprobs"
    ):
        if logprobs_mode not in ("processed_logprobs", "raw_logprobs"):
            raise ValueError(f"logprobs_mode must be processed_logprobs or raw_logprobs, not {logprobs_mode!r}")
        self.logprobs_mode = logprobs_mode
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.batch_sizes: list[int] = []  # one entry per decoded batch
        self._model_lock = threading.Lock()
        self._gen = torch.Generator().manual_seed(seed)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._abort = threading.Event()
        self.extra_fields: dict = {}  # copied into every TokenOutput (e.g. {"global_steps": N})

    # -- model access -------------------------------------------------------------------------------------------
    def load_weights(self, named_tensors) -> int:
        """Copy ``(name, tensor)`` pairs (HF names) into the model between batches; returns how many were loaded."""
        with self._model_lock, torch.no_grad():
            params = self.model.state_dict()  # shares storage with the parameters; names tied weights too
            n = 0
            for name, tensor in named_tensors:
                if name in params:
                    params[name].copy_(tensor.to(params[name].dtype))
                    n += 1
        return n

    def abort(self) -> None:
        """End the batch being decoded now; requests still queued are served afterwards."""
        self._abort.set()

    def _logprobs(self, prompt_ids: list[int], new_ids: list[int]) -> list[float]:
        ids = torch.tensor([prompt_ids + new_ids], device=self.device)
        with torch.no_grad():
            logits = self.model(ids).logits[0, len(prompt_ids) - 1 : -1].float().cpu()
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(new_ids)[:, None])[:, 0].tolist()

    def _pick(self, logits: torch.Tensor, params: dict) -> tuple[int, float]:
        """Sample one token; return it with its log-prob under ``logprobs_mode``."""
        raw = torch.log_softmax(logits, -1)
        temperature = float(params.get("temperature", 1.0))
        if temperature <= 0:
            token = int(logits.argmax())
            return token, float(raw[token])
        scaled = logits / temperature
        top_k = int(params.get("top_k", -1) or -1)
        top_p = float(params.get("top_p", 1.0))
        if top_k > 0:
            kth = torch.topk(scaled, min(top_k, scaled.numel())).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, -1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            drop = sorted_p.cumsum(0) - sorted_p > top_p
            probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0.0))
            probs = probs / probs.sum()
        token = int(torch.multinomial(probs, 1, generator=self._gen))
        processed = self.logprobs_mode == "processed_logprobs"
        return token, float(torch.log(probs[token]) if processed else raw[token])

    def _sample_batch(self, requests: list[Request]) -> list[tuple[list[int], list[float]]]:
        """Sample all requests together with one KV cache; log-probs as ``_pick`` gives them."""
        n = len(requests)
        width = max(len(r.prompt_ids) for r in requests)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((n, width), pad, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        for i, r in enumerate(requests):  # left padding: every row's next token sits in the last column
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            attention[i, width - len(r.prompt_ids) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        outs: list[list[int]] = [[] for _ in requests]
        logprobs: list[list[float]] = [[] for _ in requests]
        done = [r.max_tokens <= 0 for r in requests]
        # a stop string of L characters ends within the last 4L+1 byte-level tokens: only decode that tail
        tails = [4 * max(map(len, r.params.get("stop") or []), default=0) + 1 for r in requests]
        stop_ids = [{self.tokenizer.eos_token_id, *(r.params.get("stop_token_ids") or [])} for r in requests]
        ids, attention, positions = ids.to(self.device), attention.to(self.device), positions.to(self.device)
        with torch.no_grad():
            step = self.model(ids, attention_mask=attention, position_ids=positions, use_cache=True)
            while not all(done) and not self._abort.is_set():
                logits = step.logits[:, -1].float().cpu()  # sampling happens on the CPU, with a seeded generator
                nxt = []
                for i, r in enumerate(requests):
                    if done[i]:
                        nxt.append(pad)
                        continue
                    token, logprob = self._pick(logits[i], r.params)
                    outs[i].append(token)
                    logprobs[i].append(logprob)
                    stops = r.params.get("stop") or []
                    recent = self.tokenizer.decode(outs[i][-tails[i] :], skip_special_tokens=False) if stops else ""
                    done[i] = token in stop_ids[i] or len(outs[i]) >= r.max_tokens or any(s in recent for s in stops)
                    nxt.append(token)
                if all(done):
                    break
                attention = torch.cat([attention, attention.new_ones((n, 1))], dim=1)
                positions = positions[:, -1:] + 1
                step = self.model(
                    torch.tensor(nxt, device=self.device)[:, None],
                    attention_mask=attention,
                    position_ids=positions,
                    past_key_values=step.past_key_values,
                    use_cache=True,
                )
        return list(zip(outs, logprobs))

    def propose_batch(self, requests: list[Request]) -> list[tuple[list[int], list[float] | None]]:
        """Each request's continuation token ids (and their log-probs, when known) before stop handling."""
        return self._sample_batch(requests)

    def _stop_index(self, ids: list[int], params: dict) -> int | None:
        """Number of tokens to keep when a stop string occurs in the decoded ``ids`` (up to and including it)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        ends = [text.find(stop) + len(stop) for stop in params.get("stop") or [] if stop in text]
        if not ends:
            return None
        decoded_len = lambda n: len(self.tokenizer.decode(ids[:n], skip_special_tokens=False))  # noqa: E731
        return bisect.bisect_left(range(len(ids) + 1), min(ends), key=decoded_len)  # shortest covering prefix

    def _serve(self, requests: list[Request]) -> list:
        from verl.workers.rollout.replica import TokenOutput

        with self._model_lock:
            self._abort.clear()
            proposals = self.propose_batch(requests)
            aborted = self._abort.is_set()
            results = []
            for r, (ids, logprobs) in zip(requests, proposals):
                cut = self._stop_index(ids, r.params)
                ids = ids[:cut][: r.max_tokens] if cut is not None else ids[: r.max_tokens]
                if logprobs is None:
                    logprobs = self._logprobs(r.prompt_ids, ids) if ids else []
                results.append(
                    TokenOutput(
                        token_ids=ids,
                        log_probs=logprobs[: len(ids)],
                        stop_reason="aborted" if aborted else "completed",
                        num_preempted=0,
                        extra_fields=dict(self.extra_fields),
                    )
                )
        self.batch_sizes.append(len(requests))
        return results

    def _worker(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            requests = [req for req, _ in batch]
            try:
                for (_, future), out in zip(batch, self._serve(requests)):
                    future.set_result(out)
            except Exception as exc:  # a failed batch fails its own requests, not the server
                for _, future in batch:
                    future.set_exception(exc)

    def submit(self, prompt_ids: list[int], sampling_params: dict) -> concurrent.futures.Future:
        params = dict(sampling_params)
        request = Request(list(prompt_ids), params, int(params.get("max_tokens") or 512))
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="hf-generation", daemon=True)
                self._thread.start()
        self._queue.put((request, future))
        return future

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        """verl's ``TokenOutput`` for one request (batched with whatever else is waiting)."""
        return await asyncio.wrap_future(self.submit(prompt_ids, sampling_params))
