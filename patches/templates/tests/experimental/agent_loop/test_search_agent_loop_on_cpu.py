"""The search agent loop against a scripted LLM server and a real retrieval server on loopback."""

import asyncio

import pytest
from aiohttp import web
from omegaconf import OmegaConf

from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry
from verl.experimental.agent_loop.search_agent_loop import SearchAgentConfig, SearchAgentLoop
from verl.utils.reward_score.search_agent import compute_score
from verl.utils.reward_score.search_agent.dialects import DIALECTS, result_block

from .search_agent_test_utils import EOS, RetrievalServer, ScriptedServer, byte_tokenizer

PASSAGES = [
    ("Orvell Glassworks", "The Orvell Glassworks was founded in 1871 by Ilsa Marrow."),
    ("Ilsa Marrow", "Ilsa Marrow was an industrialist born in the harbour town of Keddle."),
]
QUESTION = [{"role": "user", "content": "Where was the founder of the Orvell Glassworks born?"}]
TOKENIZER = byte_tokenizer()


def results_so_far(text: str) -> int:
    return sum(text.count(d.result_open) for d in DIALECTS.values() if d.result_open)


def two_hops(text: str) -> str:
    """Search twice, then answer; what to write depends on how many result blocks came back."""
    n = results_so_far(text)
    if n == 0:
        return "<think> founder first </think> <search> Orvell Glassworks founded </search> ignored"
    if n == 1:
        return "<think> now the birthplace </think> <search>Ilsa Marrow born</search>"
    return f"<think> done </think> <answer> The answer is \\boxed{{Keddle}} </answer>{EOS}"


def run(script, retriever, response_length=1024, row_search=None, **settings):
    """One trajectory: (output, decoded response, server)."""
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {"rollout": {"response_length": response_length, "prompt_length": 512}},
            "search_agent": {"retriever": retriever, "top_k": 2, "max_result_tokens": 200, **settings},
        }
    )
    server = ScriptedServer(TOKENIZER, script)

    async def main():
        loop = SearchAgentLoop(
            trainer_config=DictConfigWrap(config),
            server_manager=server,
            tokenizer=TOKENIZER,
            processor=None,
            dataset_cls=None,
            data_config=DictConfigWrap(OmegaConf.create({})),
        )
        extra_info = {"search": row_search} if row_search else {}
        return await loop.run({"temperature": 1.0, "logprobs": True}, raw_prompt=QUESTION, extra_info=extra_info)

    out = asyncio.run(main())
    return out, TOKENIZER.decode(out.response_ids), server


def with_retrieval_server(fn, handler=None):
    async def main():
        async with RetrievalServer(PASSAGES, handler) as server:
            return await asyncio.to_thread(fn, server.url), server.requests

    return asyncio.run(main())


def test_registered_with_verl():
    import verl.experimental.agent_loop  # noqa: F401  (the package import registers the built-in loops)

    assert _agent_loop_registry["search_agent"] == {"_target_": f"{SearchAgentLoop.__module__}.SearchAgentLoop"}


def test_two_searches_mask_exactly_the_result_blocks():
    (out, text, server), requests = with_retrieval_server(lambda url: run(two_hops, url))
    d = DIALECTS["research"]
    ids, mask = out.response_ids, out.response_mask
    assert len(ids) == len(mask) == len(out.response_logprobs) and out.prompt_ids
    masked = TOKENIZER.decode([t for t, m in zip(ids, mask) if m == 0])
    own = TOKENIZER.decode([t for t, m in zip(ids, mask) if m == 1])
    blocks = masked.split(d.result_close)[:-1]
    assert len(blocks) == 2 and "Ilsa Marrow" in blocks[0] and "Keddle" in blocks[1]
    assert blocks[0].startswith("\n\n<result>\nDoc 1 (Title: Orvell Glassworks) The Orvell Glassworks was founded")
    assert d.result_open not in own and own.count(d.query_close) == 2 and "ignored" not in text
    assert masked == "".join(result_block(b.split(d.result_open, 1)[1], d) for b in blocks)
    # log-probs: the server's on sampled tokens, 0 on retrieved ones
    assert all(lp == -0.25 for lp, m in zip(out.response_logprobs, mask) if m == 1)
    assert all(lp == 0.0 for lp, m in zip(out.response_logprobs, mask) if m == 0)
    # every generation stops at the query close tag, with the remaining budget as max_tokens
    assert [c["stop"] for c in server.calls] == [["</search>"]] * 3
    assert all(c["include_stop_str_in_output"] for c in server.calls)
    budgets = [c["max_tokens"] for c in server.calls]
    assert budgets[0] == 1024 and budgets[0] > budgets[1] > budgets[2]
    assert [r["queries"] for r in requests] == [["Orvell Glassworks founded"], ["Ilsa Marrow born"]]
    # the counters reach the reward through extra_info
    fields = out.extra_fields
    assert fields["num_searches"] == 2 and fields["num_failed_searches"] == 0
    assert fields["retrieved_tokens"] == mask.count(0)
    solution = TOKENIZER.decode(ids, skip_special_tokens=True)  # as verl's reward loop decodes it
    score = compute_score("two_hop", solution, ["Keddle"], extra_info=fields)
    assert score["score"] == 1.0 and score["num_searches"] == 2


def test_passages_are_cut_to_max_result_tokens():
    (out, text, _), _ = with_retrieval_server(lambda url: run(two_hops, url, max_result_tokens=24))
    d = DIALECTS["research"]
    bodies = [b.split(d.result_close)[0].strip() for b in text.split(d.result_open)[1:]]
    assert len(bodies) == 2 and bodies[0] == "Doc 1 (Title: Orvell Gla ..."  # 24 byte-tokens, then " ..."
    assert all(len(TOKENIZER.encode(b, add_special_tokens=False)) <= 24 + len(" ...") for b in bodies)


def test_a_failing_retriever_is_recorded_and_the_trajectory_goes_on():
    async def broken(request):
        return web.Response(status=500)

    spec = {"type": "http", "url": "", "max_retries": 0}
    (out, text, _), requests = with_retrieval_server(lambda url: run(two_hops, {**spec, "url": url}), broken)
    assert out.extra_fields["num_failed_searches"] == 2 and out.extra_fields["num_searches"] == 2
    assert text.count("Search failed") == 2 and "\\boxed{Keddle}" in text and len(requests) == 2


def test_limits_invalid_queries_and_budget():
    def empty_then_many(text: str) -> str:
        n = results_so_far(text)
        if n == 0:
            return "<search> </search>"
        return "<search> Marrow </search>" if n < 4 else f"<answer> x </answer>{EOS}"

    (out, text, _), requests = with_retrieval_server(lambda url: run(empty_then_many, url, max_searches=2))
    fields = out.extra_fields
    assert fields["num_invalid_queries"] == 1 and fields["num_searches"] == 2 and len(requests) == 2
    assert "No query found" in text and "Search limit of 2 reached" in text

    (out, _, server), _ = with_retrieval_server(lambda url: run(two_hops, url, response_length=150))
    assert len(out.response_ids) == len(out.response_mask) == 150  # cut at the budget, mid result block
    assert server.calls[0]["max_tokens"] == 150 and len(server.calls) == 1


def test_row_settings_override_the_config():
    (out, text, server), _ = with_retrieval_server(
        lambda url: run(two_hops, url, row_search={"dialect": "search_r1", "top_k": 1})
    )
    assert server.calls[0]["stop"] == ["</search>"] and out.extra_fields["dialect"] == "search_r1"
    assert text.count("<information>") == 2 and text.count("Doc 2") == 0  # top_k 1 from the row
    with pytest.raises(ValueError, match="unknown search_agent settings"):
        SearchAgentConfig.merged({"top_k": 1}, {"topk": 2})
