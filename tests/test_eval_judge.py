"""The LLM judge against a local chat-completions server that speaks the real API: verdicts, the disk cache
(a second run asks nothing), failures recorded with bounded retries, the API key sent but never logged."""

from __future__ import annotations

import logging

import pytest

from research_plugin.evaluation.judge import JudgeItem, LLMJudge

from .openai_fakes import FakeChat, same_meaning

KEY = "sk-test-secret-4242"


ITEMS = [
    JudgeItem("Where was Ilsa Marrow born?", ["Keddle"], "in the harbour town of keddle"),
    JudgeItem("Capital of Varenholt?", ["Lune", "Lune City"], "Tamsk"),
    JudgeItem("Who founded the glassworks?", ["Ilsa Marrow"], None),  # no answer: 0 without asking
]


@pytest.fixture
def chat():
    server = FakeChat(same_meaning)
    yield server
    server.stop()


def make_judge(chat, tmp_path, **kw):
    return LLMJudge(chat.url("/v1"), "judge-model", cache_dir=tmp_path / "cache", backoff=0.01, **kw)


def test_verdicts_and_cache(chat, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    judge = make_judge(chat, tmp_path, api_key_env="JUDGE_KEY")
    verdicts = judge.judge_all(ITEMS, progress=False)
    assert [v.value for v in verdicts] == [1.0, 0.0, 0.0]
    assert len(chat.requests) == 2  # the unanswered item is not sent
    sent = chat.requests[0]
    assert sent["model"] == "judge-model" and sent["temperature"] == 0
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert "Does the predicted answer mean the same as any of the gold answers?" in sent["messages"][1]["content"]
    assert chat.headers[0]["Authorization"] == f"Bearer {KEY}"

    again = make_judge(chat, tmp_path, api_key_env="JUDGE_KEY").judge_all(ITEMS, progress=False)
    assert [v.value for v in again] == [1.0, 0.0, 0.0]
    assert len(chat.requests) == 2  # all from the disk cache: no HTTP call
    assert [v.source for v in again] == ["cache", "cache", "no answer"]
    # another judge model is another cache entry
    other = LLMJudge(chat.url("/v1"), "other-model", cache_dir=tmp_path / "cache", backoff=0.01)
    assert other.judge_all(ITEMS[:1], progress=False)[0].error.startswith("POST")  # the fake serves judge-model only
    assert len(chat.requests) == 3

    files = list((tmp_path / "cache").glob("*.json"))
    assert len(files) == 2
    assert all(KEY not in f.read_text() for f in files)
    assert KEY not in caplog.text


def test_failures_are_recorded_with_bounded_retries_and_not_cached(chat, tmp_path):
    chat.status = 500
    verdicts = make_judge(chat, tmp_path, max_retries=2).judge_all(ITEMS[:1], progress=False)
    assert verdicts[0].value is None and "HTTP 500" in verdicts[0].error and "after 3 attempts" in verdicts[0].error
    assert len(chat.requests) == 3  # one try + two retries

    chat.status = 400  # not worth retrying
    verdicts = make_judge(chat, tmp_path, max_retries=2).judge_all(ITEMS[:1], progress=False)
    assert "HTTP 400" in verdicts[0].error and len(chat.requests) == 4

    chat.status = 200
    chat.decide = lambda message: "I cannot tell."
    verdicts = make_judge(chat, tmp_path).judge_all(ITEMS[:1], progress=False)
    assert verdicts[0].value is None and "holds no yes_no verdict" in verdicts[0].error
    assert not list((tmp_path / "cache").glob("*.json"))  # failures are not cached: a rerun asks again

    chat.decide = same_meaning
    assert make_judge(chat, tmp_path).judge_all(ITEMS[:1], progress=False)[0].value == 1.0


def test_server_down_is_a_recorded_failure(tmp_path):
    from .local_http import free_port

    judge = LLMJudge(f"http://127.0.0.1:{free_port()}", "m", cache_dir=tmp_path, max_retries=1, backoff=0.01)
    (verdict,) = judge.judge_all(ITEMS[:1], progress=False)
    assert verdict.value is None and "after 2 attempts" in verdict.error
