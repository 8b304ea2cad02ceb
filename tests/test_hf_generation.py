from __future__ import annotations

import asyncio

import pytest
import torch


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_plugin.verl.hf_generation import HFGenerationServer

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


def test_concurrent_requests_are_decoded_in_one_batch_with_the_same_results(server):
    tok = server.tokenizer
    prompts = [tok.encode(t) for t in ("Where is Keddle?", "Doc 1 (Title: X) a longer prompt here", "Who")]
    params = [dict(temperature=0, max_tokens=n, logprobs=True) for n in (15, 9, 12)]
    alone = [gen(server, p, **kw) for p, kw in zip(prompts, params)]

    async def together():
        return await asyncio.gather(
            *[
                server.generate(str(i), prompt_ids=p, sampling_params=kw)
                for i, (p, kw) in enumerate(zip(prompts, params))
            ]
        )

    before = len(server.batch_sizes)
    batched = asyncio.run(together())
    assert max(server.batch_sizes[before:]) > 1  # at least two requests shared a forward pass
    for a, b, kw in zip(alone, batched, params):
        # left padding changes nothing: same greedy tokens, same log-probs, each row's own max_tokens
        assert b.token_ids == a.token_ids and len(b.token_ids) <= kw["max_tokens"]
        assert b.log_probs == pytest.approx(a.log_probs, abs=1e-4)


def test_load_weights_changes_what_is_generated(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_plugin.verl.hf_generation import HFGenerationServer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    srv = HFGenerationServer(model, AutoTokenizer.from_pretrained(tiny_model_dir))
    prompt = srv.tokenizer.encode("Where is Keddle?")
    before = gen(srv, prompt, temperature=0, max_tokens=8, logprobs=True)
    new = {k: v + 0.5 * torch.randn_like(v) for k, v in model.state_dict().items()}
    assert srv.load_weights(new.items()) == len(new)
    after = gen(srv, prompt, temperature=0, max_tokens=8, logprobs=True)
    assert after.log_probs != pytest.approx(before.log_probs, abs=1e-3)
    assert srv._logprobs(prompt, after.token_ids) == pytest.approx(after.log_probs, abs=1e-4)


@pytest.mark.parametrize("mode", ["processed_logprobs", "raw_logprobs"])
def test_logprobs_follow_the_logprobs_mode(tiny_model_dir, mode):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_plugin.verl.hf_generation import HFGenerationServer

    srv = HFGenerationServer(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
        logprobs_mode=mode,
    )  # fmt: skip
    prompt = srv.tokenizer.encode("Where is Keddle?")
    out = gen(srv, prompt, temperature=0.5, max_tokens=10, logprobs=True)
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = srv.model(ids).logits[0, len(prompt) - 1 : -1]
    scale = 0.5 if mode == "processed_logprobs" else 1.0  # processed: the tempered distribution sampled from
    want = torch.log_softmax(logits / scale, -1).gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
    assert out.log_probs == pytest.approx(want.tolist(), abs=1e-4)


def test_rollout_server_samples_with_the_rollout_seed(tiny_model_dir):
    """``actor_rollout_ref.rollout.seed`` seeds the hf backend's sampling, as it seeds verl's vLLM server."""
    from omegaconf import OmegaConf

    from research_plugin.verl.hf_rollout import HFRolloutServer

    def sample(seed: int) -> list[int]:
        config = OmegaConf.create({"seed": seed, "max_num_seqs": 4, "logprobs_mode": None})
        srv = HFRolloutServer(config, OmegaConf.create({"path": str(tiny_model_dir)}))
        prompt = srv.engine.tokenizer.encode("Where is Keddle?")
        return list(gen(srv.engine, prompt, temperature=1.0, max_tokens=24).token_ids)

    assert sample(7) == sample(7) != sample(8)
