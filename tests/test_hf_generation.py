from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_plugin.hf_generation import HFGenerationServer

    return HFGenerationServer(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir), seed=3
    )


def gen(server, prompt_ids, **params):
    return asyncio.run(server.generate("r", prompt_ids=prompt_ids, sampling_params=params))


def test_logprobs_are_the_models_and_max_tokens_holds(server):
    prompt = server.tokenizer.encode("Where is Keddle?")
    out = gen(server, prompt, temperature=1.0, max_tokens=12, logprobs=True)
    assert 0 < len(out.token_ids) <= 12 and len(out.log_probs) == len(out.token_ids)
    # the KV-cached sampling log-probs equal a full teacher-forced forward pass
    assert server._logprobs(prompt, out.token_ids) == pytest.approx(out.log_probs, abs=1e-4)


def test_greedy_is_deterministic_and_stop_string_cuts_right_after_it(server):
    prompt = server.tokenizer.encode("Doc 1 (Title: X)")
    decode = server.tokenizer.decode
    a = gen(server, prompt, temperature=0, max_tokens=20)
    assert a.token_ids == gen(server, prompt, temperature=0, max_tokens=20).token_ids
    stop = decode(a.token_ids)[5:8]  # a stop string the greedy output is known to contain
    c = gen(server, prompt, temperature=0, max_tokens=20, stop=[stop])
    # the same greedy tokens, cut at the first token whose text completes the stop string
    n = next(n for n in range(1, len(a.token_ids) + 1) if stop in decode(a.token_ids[:n]))
    assert c.token_ids == a.token_ids[:n] and c.log_probs == pytest.approx(a.log_probs[:n], abs=1e-5)


def test_stop_token_ids_end_generation(server):
    prompt = server.tokenizer.encode("Doc 1 (Title: X)")
    a = gen(server, prompt, temperature=0, max_tokens=20)
    stop_id = a.token_ids[6]
    c = gen(server, prompt, temperature=0, max_tokens=20, stop_token_ids=[stop_id])
    assert c.token_ids == a.token_ids[: a.token_ids.index(stop_id) + 1]
