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


def test_greedy_is_deterministic_and_stop_string_cuts_after_it(server):
    prompt = server.tokenizer.encode("Doc 1 (Title: X)")
    a = gen(server, prompt, temperature=0, max_tokens=20)
    b = gen(server, prompt, temperature=0, max_tokens=20)
    assert a.token_ids == b.token_ids
    text = server.tokenizer.decode(a.token_ids)
    stop = text[3:6]  # a stop string the greedy output is known to contain
    c = gen(server, prompt, temperature=0, max_tokens=20, stop=[stop])
    ctext = server.tokenizer.decode(c.token_ids)
    assert stop in ctext and len(c.token_ids) < len(a.token_ids) or ctext.endswith(stop)
    assert ctext.find(stop) + len(stop) > len(server.tokenizer.decode(c.token_ids[:-1]))  # nothing after its token
