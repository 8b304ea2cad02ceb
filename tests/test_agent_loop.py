"""The search agent loop driven by verl's real AgentLoopWorker and RewardLoopWorker, in-process.

The LLM server is the one piece that cannot run here (vLLM); ``HFServer`` stands in for it with a real
tiny Qwen2 model and vLLM's ``generate`` semantics. Retrieval is real BM25 over a corpus we wrote.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from research_plugin.core.dialects import DIALECTS, result_block
from research_plugin.verl import local_rollout
from research_plugin.verl.hf_generation import HFGenerationServer
from research_plugin.verl.local_rollout import run_agent_loop, trainer_config

from .local_http import free_port

RESPONSE_LENGTH = 384


class HFServer(HFGenerationServer):
    """The tiny model, with scripted text where a script gives one (scored by the model, not sampled)."""

    def __init__(self, model, tokenizer, script=None):
        super().__init__(model, tokenizer)
        self.script = script
        self.calls = []  # the sampling params of every generate call

    def propose_batch(self, requests):
        out, unscripted = [], []
        for r in requests:
            self.calls.append({"params": dict(r.params)})
            scripted = self.script(self.tokenizer.decode(r.prompt_ids)) if self.script else None
            # scripted text is scored by the model (log-probs None), the rest is sampled
            out.append(None if scripted is None else (self.tokenizer.encode(scripted, add_special_tokens=False), None))
            if scripted is None:
                unscripted.append(r)
        sampled = iter(super().propose_batch(unscripted) if unscripted else [])
        return [o if o is not None else next(sampled) for o in out]


def response_so_far(prompt_text: str) -> str:
    """What follows the assistant header: the system prompt also mentions the tags, so skip it."""
    return prompt_text.rsplit("<|im_start|>assistant\n", 1)[-1]


def two_hop_script(prompt_text: str):
    """Search twice, then answer; the decision depends only on how many results came back so far."""
    n_results = response_so_far(prompt_text).count("<result>")
    if n_results == 0:
        return "<think> I need the founder first. </think> <search> who founded the Orvell Glassworks </search>"
    if n_results == 1:
        return "<think> Now where was she born? </think> <search>Ilsa Marrow born</search>"
    return "<think> Done. </think> <answer> The answer is \\boxed{Keddle} </answer><|im_end|>"


def make_config(tiny_model_dir, retriever_overrides, response_length=RESPONSE_LENGTH, extra=()):
    return trainer_config(
        tiny_model_dir,
        response_length=response_length,
        overrides=["+search_agent.top_k=2", *retriever_overrides, *extra],
    )


def make_batch(questions_answers, dialect="research"):
    return local_rollout.make_batch([{"question": q, "golden_answers": [a]} for q, a in questions_answers], dialect)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def bm25(mini_corpus):
    return ["+search_agent.retriever.type=bm25", f"+search_agent.retriever.corpus={mini_corpus}"]


def test_two_searches_masks_exactly_the_results(tiny_model_dir, mini_corpus, model_and_tokenizer):
    model, tok = model_and_tokenizer
    config = make_config(tiny_model_dir, bm25(mini_corpus))
    server = HFServer(model, tok, script=two_hop_script)
    out = run_agent_loop(
        config, server, make_batch([("Where was the founder of the Orvell Glassworks born?", "Keddle")])
    )

    responses, mask = out.batch["responses"][0], out.batch["response_mask"][0]
    attn = out.batch["attention_mask"][0, -RESPONSE_LENGTH:]
    valid = attn.bool()
    ids = responses[valid].tolist()
    m = mask[valid].tolist()
    masked_text = tok.decode([t for t, k in zip(ids, m) if k == 0])
    policy_text = tok.decode([t for t, k in zip(ids, m) if k == 1], skip_special_tokens=True)

    # the masked tokens are exactly the two result blocks, and they hold the retrieved passages
    blocks = re.findall(r"<result>.*?</result>", masked_text, flags=re.S)
    assert len(blocks) == 2 and masked_text.count("<result>") == 2
    assert "Ilsa Marrow" in blocks[0] and "Keddle" in blocks[1]
    assert "<result>" not in policy_text and "Doc 1" not in policy_text
    assert policy_text.count("<search>") == 2 and "\\boxed{Keddle}" in policy_text
    # mask is 0 on padding and results only; every masked token inside the response is a result token
    assert mask[~valid].sum() == 0
    # log-probs: the model's own on policy tokens, 0 on result tokens
    logprobs = out.batch["rollout_log_probs"][0][valid]
    assert torch.all(logprobs[torch.tensor(m) == 0] == 0)
    assert torch.all(logprobs[torch.tensor(m) == 1] < 0)
    # every generate call stopped on the close tag or EOS, with the remaining budget as max_tokens
    assert [c["params"]["stop"] for c in server.calls] == [["</search>"]] * 3
    assert all(c["params"]["include_stop_str_in_output"] for c in server.calls)
    budgets = [c["params"]["max_tokens"] for c in server.calls]
    assert budgets[0] == RESPONSE_LENGTH and budgets[0] > budgets[1] > budgets[2]
    # the retriever statistics reach the reward, and the reward parts come back in the batch
    nt = out.non_tensor_batch
    assert nt["num_searches"][0] == 2 and nt["num_failed_searches"][0] == 0
    assert nt["retrieved_tokens"][0] == sum(1 for k in m if k == 0)
    assert nt["score"][0] == pytest.approx(1.0) and nt["f1"][0] == pytest.approx(1.0)
    assert nt["format"][0] == 1.0 and nt["ended_by_eos"][0] and nt["truncated"][0] == 0.0
    assert out.batch["rm_scores"][0].sum().item() == pytest.approx(1.0)


def test_mask_results_false_trains_on_the_result_blocks(tiny_model_dir, mini_corpus, model_and_tokenizer):
    """Search-R1's ablation, the learning benchmark's negative control: the same trajectory, all in the loss."""
    model, tok = model_and_tokenizer
    question = [("Where was the founder of the Orvell Glassworks born?", "Keddle")]
    masks = {}
    for flag in ("true", "false"):
        config = make_config(tiny_model_dir, bm25(mini_corpus), extra=[f"+search_agent.mask_results={flag}"])
        out = run_agent_loop(config, HFServer(model, tok, script=two_hop_script), make_batch(question))
        valid = out.batch["attention_mask"][0, -RESPONSE_LENGTH:].bool()
        masks[flag] = (out.batch["responses"][0][valid].tolist(), out.batch["response_mask"][0][valid].tolist())
    (ids, masked), (same_ids, unmasked) = masks["true"], masks["false"]
    assert ids == same_ids and 0 in masked and set(unmasked) == {1}
    assert "<result>" in tok.decode([t for t, k in zip(ids, masked) if k == 0])


def test_a_truncated_trajectory_is_told_to_the_reward(tiny_model_dir, mini_corpus, model_and_tokenizer):
    """ReSearch scores a response that ran out of budget 0: the loop tells the reward, which has only the text."""
    model, tok = model_and_tokenizer

    def answer_without_eos(prompt_text):  # a well-formed answer, then the budget runs out before EOS
        done = two_hop_script(prompt_text)
        return done.replace("<|im_end|>", " And more words" * 40) if "<answer>" in done else done

    config = make_config(tiny_model_dir, bm25(mini_corpus))
    row = [("Where was the founder of the Orvell Glassworks born?", "Keddle")]
    ended = run_agent_loop(config, HFServer(model, tok, script=two_hop_script), make_batch(row)).non_tensor_batch
    cut = run_agent_loop(config, HFServer(model, tok, script=answer_without_eos), make_batch(row)).non_tensor_batch
    assert ended["ended_by_eos"][0] and ended["score"][0] == pytest.approx(1.0)
    assert not cut["ended_by_eos"][0] and cut["truncated"][0] == 1.0
    assert cut["score"][0] == 0.0 and cut["format"][0] == 0.0 and cut["f1"][0] == pytest.approx(1.0)
    # the same text scored as a string, with no word from the loop, is not penalised
    from research_plugin import compute_score

    text = "<think> x </think> <answer> \\boxed{Keddle} </answer>"
    assert compute_score("x", text, ["Keddle"])["score"] == 1.0
    assert compute_score("x", text, ["Keddle"], extra_info={"ended_by_eos": False})["score"] == 0.0


def test_a_row_whose_prompt_opens_a_think_block(tiny_model_dir, mini_corpus, model_and_tokenizer):
    """R1-Searcher's prompts end with <think>: the chat prompt gets it after the generation prompt, and the format
    check of the reward accepts a response that starts inside the think block."""
    model, tok = model_and_tokenizer
    d = DIALECTS["r1_searcher"]
    seen = []

    def script(prompt_text):
        seen.append(prompt_text)
        if d.result_open not in response_so_far(prompt_text):
            return f" I need the founder. {d.think_close} {d.query_open} Orvell Glassworks founder {d.query_close}"
        return f"{d.answer_open} Ilsa Marrow {d.answer_close}<|im_end|>"  # its code allows one think block only

    config = make_config(
        tiny_model_dir, bm25(mini_corpus), 1024, extra=["reward.custom_reward_function.reward_kwargs.scheme=r1_stage2"]
    )
    batch = make_batch([("Who founded the Orvell Glassworks?", "Ilsa Marrow")] * 2, "r1_searcher")
    batch.non_tensor_batch["extra_info"][0] = {"index": 0, "dialect": "r1_searcher", "opens_think": True}
    out = run_agent_loop(config, HFServer(model, tok, script=script), batch)
    nt = out.non_tensor_batch
    assert response_so_far(seen[0]).startswith(d.think_open) or response_so_far(seen[1]).startswith(d.think_open)
    assert sum(response_so_far(p) == d.think_open for p in seen) == 1  # only the row that asked for it
    assert list(nt["format"]) == [1.0, 0.0]  # the second row's response closes a think block it never opened
    assert nt["score"][0] == pytest.approx(1.0) and nt["score"][1] == pytest.approx(-1.0)


def test_retriever_down_gives_finished_trajectory_with_error(tiny_model_dir, model_and_tokenizer):
    model, tok = model_and_tokenizer
    url = f"http://127.0.0.1:{free_port()}/retrieve"  # nothing listens there
    config = make_config(
        tiny_model_dir,
        [
            "+search_agent.retriever.type=http",
            f"+search_agent.retriever.url={url}",
            "+search_agent.retriever.max_retries=1",
            "+search_agent.retriever.backoff=0.01",
        ],
    )
    server = HFServer(model, tok, script=two_hop_script)
    out = run_agent_loop(
        config, server, make_batch([("Where was the founder of the Orvell Glassworks born?", "Keddle")])
    )
    nt = out.non_tensor_batch
    assert nt["num_searches"][0] == 2 and nt["num_failed_searches"][0] == 2
    text = tok.decode(out.batch["responses"][0][out.batch["attention_mask"][0, -RESPONSE_LENGTH:].bool()])
    assert text.count("Search failed") == 2
    assert "\\boxed{Keddle}" in text  # the trajectory went on to its answer
    assert nt["score"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_malformed_and_limits(tiny_model_dir, mini_corpus, model_and_tokenizer, dialect):
    """Close tag without open, empty query, the policy's own result text, junk, search limit, budget."""
    model, tok = model_and_tokenizer
    d = DIALECTS[dialect]
    steps = [
        f"junk \u202e\x00 {d.query_close}",  # close without open
        f"{d.query_open}   {d.query_close}",  # empty query
        f"{d.result_open} my own result {d.result_close} {d.query_open} Tamsk city {d.query_close}",
        f"{d.query_open} Quessa River length {d.query_close}",  # over the limit of 1 search
    ]

    def script(prompt_text):
        text = response_so_far(prompt_text)
        k = text.count(d.result_open) - text.count(f"{d.result_open} my own")
        return steps[k] if k < len(steps) else f"{d.answer_open} \\boxed{{412}} {d.answer_close}<|im_end|>"

    length = 1024  # the tiny tokenizer spends many tokens on r1_searcher's long tags
    config = make_config(tiny_model_dir, bm25(mini_corpus), length, extra=["+search_agent.max_searches=1"])
    out = run_agent_loop(config, HFServer(model, tok, script=script), make_batch([("How long is it?", "412")], dialect))
    valid = out.batch["attention_mask"][0, -length:].bool()
    ids, mask = out.batch["responses"][0][valid].tolist(), out.batch["response_mask"][0][valid].tolist()
    masked = tok.decode([t for t, k in zip(ids, mask) if k == 0])
    policy = tok.decode([t for t, k in zip(ids, mask) if k == 1])
    assert masked.count("No query found") == 2
    assert masked.count("Search limit of 1 reached") == 1
    assert "Tamsk" in masked
    assert "my own result" in policy  # text the policy wrote stays policy text
    nt = out.non_tensor_batch
    assert nt["num_searches"][0] == 1 and nt["num_invalid_queries"][0] == 2


def test_budget_truncates_cleanly_and_sampled_junk_never_raises(tiny_model_dir, mini_corpus, model_and_tokenizer):
    model, tok = model_and_tokenizer
    first = tok.encode(two_hop_script(""), add_special_tokens=False)
    length = len(first) + 5  # the first result block starts but does not fit
    config = make_config(tiny_model_dir, bm25(mini_corpus), response_length=length)
    # scripted: the first result block does not fit and is cut at the budget; beside it, a row answered at once

    def script(prompt_text):
        return (
            "<answer> \\boxed{Keddle} </answer><|im_end|>" if "At once?" in prompt_text else two_hop_script(prompt_text)
        )

    rows = make_batch([("Where?", "Keddle"), ("At once?", "Keddle")])
    out = run_agent_loop(config, HFServer(model, tok, script=script), rows)
    assert int(out.batch["attention_mask"][0, -length:].sum()) == length
    assert out.batch["response_mask"][0, -1] == 0  # ended inside a result block
    # both rows carry every reward field; the cut one is told to the reward, which scores it as cut off (ReSearch: 0)
    nt = out.non_tensor_batch
    assert all(len(nt[k]) == 2 and None not in list(nt[k]) for k in ("score", "f1", "format", "truncated"))
    assert (bool(nt["ended_by_eos"][0]), nt["truncated"][0], nt["score"][0]) == (False, 1.0, 0.0)
    assert nt["num_searches"][0] == 1 and nt["retrieved_tokens"][0] == 5
    assert (bool(nt["ended_by_eos"][1]), nt["truncated"][1], nt["f1"][1]) == (True, 0.0, 1.0)
    # unscripted: a random model writes junk until the budget; nothing raises, lengths stay in bounds
    out = run_agent_loop(config, HFServer(model, tok), make_batch([("Where?", "Keddle"), ("What?", "Lune")]))
    assert out.batch["responses"].shape == (2, length)
    assert np.all(out.non_tensor_batch["score"] >= 0)


def test_result_block_tokens_match_dialect(tiny_model_dir):
    """Result blocks are tokenised from the dialect's own result_block text (decode round-trips)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for d in DIALECTS.values():
        text = result_block("Doc 1 (Title: A) b", d)
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_settings_from_agent_loop_config_file_and_row(
    tiny_model_dir, mini_corpus, model_and_tokenizer, tmp_path, monkeypatch
):
    """verl's agent_loop_config_path entries pass settings as kwargs; a row's extra_info.search overrides them."""
    from research_plugin import retrieval

    sent = []

    class Recording(retrieval.BM25Retriever):
        async def _search(self, queries, top_k):
            sent.append((list(queries), top_k))
            return await super()._search(queries, top_k)

    monkeypatch.setitem(retrieval.RETRIEVER_TYPES, "recording_bm25", Recording)
    loops = tmp_path / "agent_loops.yaml"
    loops.write_text(
        "- name: r1_search_agent\n"
        "  _target_: research_plugin.verl.agent_loop.SearchAgentLoop\n"
        "  dialect: r1_searcher\n"
        "  top_k: 1\n"
        "  max_query_chars: 12\n"
        f"  retriever: {{type: recording_bm25, corpus: '{mini_corpus}'}}\n"
    )
    config = make_config(
        tiny_model_dir,
        [f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}"],
        response_length=768,
    )
    d = DIALECTS["r1_searcher"]

    def script(prompt_text):
        if d.result_open in response_so_far(prompt_text):
            return f"{d.answer_open} Keddle {d.answer_close}<|im_end|>"
        return f"{d.think_open} hmm {d.think_close} {d.query_open} Quessa River length in kilometres {d.query_close}"

    batch = make_batch([("How long is the Quessa?", "412"), ("How long is the Quessa?", "412")], "r1_searcher")
    batch.non_tensor_batch["agent_name"][:] = "r1_search_agent"
    batch.non_tensor_batch["extra_info"][1] = {"index": 1, "search": {"top_k": 2}}
    model, tok = model_and_tokenizer
    server = HFServer(model, tok, script=script)
    out = run_agent_loop(config, server, batch)

    assert all(c["params"]["stop"] == [d.query_close] for c in server.calls)
    assert sorted(sent) == [(["Quessa River"], 1), (["Quessa River"], 2)]  # query cut to 12 chars, then stripped
    for i, k in enumerate([1, 2]):
        text = tok.decode(out.batch["responses"][i])
        passages = text.split(d.result_open)[1].split(d.result_close)[0].strip().splitlines()  # one per line
        assert len(passages) == k and "Quessa" in passages[0]
    assert list(out.non_tensor_batch["dialect"]) == ["r1_searcher"] * 2


def test_bad_settings_are_clear_errors():
    from research_plugin.core.search_step import SearchAgentConfig

    with pytest.raises(ValueError, match="unknown search_agent settings"):
        SearchAgentConfig.merged({"topk": 3})
    with pytest.raises(ValueError, match="unknown dialect"):
        SearchAgentConfig.merged({"dialect": "nope"})
    with pytest.raises(ValueError, match="out of range"):
        SearchAgentConfig.merged({"top_k": 0})
    with pytest.raises(ValueError, match="mask_results must be true or false"):
        SearchAgentConfig.merged({"mask_results": "no"})
    assert SearchAgentConfig.merged({"top_k": 3}, None, {"top_k": 4}).top_k == 4


@pytest.mark.parametrize("cap", [1024, 20])
def test_result_ids_are_the_result_blocks_tokens_and_repeat_from_the_cache(tiny_model_dir, cap):
    """What the verl loop appends is exactly the tokenised ``result_block`` text, cut or not; a second trajectory
    that gets the same passages takes the ids from the process's cache, and a notice is never cut."""
    import asyncio

    from transformers import AutoTokenizer

    from research_plugin.core import tokenizing
    from research_plugin.core.search_step import SearchAgentConfig, SearchStep

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = {"type": "latency", "stages": [[0, 0]], "words": 30}
    cfg = SearchAgentConfig(retriever=spec, top_k=3, max_result_tokens=cap, max_searches=1)
    segment = "<think> x </think>\n<search> who founded Orvell </search>"

    async def both(step):
        return await step.result_ids(segment), await SearchStep(cfg, tok).result_block(segment)

    ids, text = asyncio.run(both(SearchStep(cfg, tok)))
    assert ids == tok.encode(text, add_special_tokens=False)
    assert (" ..." in text) == (cap == 20)
    assert len(tokenizing._check(tok).blocks) >= 1
    step = SearchStep(cfg, tok)
    again = asyncio.run(step.result_ids(segment))
    assert again == ids and step.counters.num_searches == 1  # searched, then tokenised from the cache
    notice = asyncio.run(step.result_ids(segment))  # past max_searches: a notice, whole however small the cap
    assert "Search limit of 1 reached" in tok.decode(notice)
