"""``research-plugin eval`` end to end on CPU: verl's own agent-loop and reward workers, the bundled corpus (BM25),
the tiny model as a local HF policy and behind a local OpenAI-compatible completions server, a scripted policy
with known scores, the LLM judge, resume after a killed run, and failures that are recorded, not fatal."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from research_plugin.core.prompts import base_prompt, chat_messages
from research_plugin.evaluation.demo import load_questions
from research_plugin.evaluation.metrics import answer_scores
from research_plugin.evaluation.runner import EvalSettings, run_eval

from .local_http import wait_until
from .openai_fakes import FakeChat, FakeCompletions, hf_backend, same_meaning, scripted_backend

QUESTIONS = load_questions(16)


def bench_rows(source: str, questions: list[dict], template: str = "instruct") -> list[dict]:
    """Rows in the schema ``research-plugin prepare`` writes."""
    rows = []
    for i, q in enumerate(questions):
        if template == "base":
            prompt = [{"role": "user", "content": base_prompt(q["question"], "research")}]
        else:
            prompt = chat_messages(q["question"], "research")
        rows.append(
            {
                "data_source": source,
                "prompt": prompt,
                "ability": "fact-reasoning",
                "reward_model": {"style": "rule", "ground_truth": q["golden_answers"]},
                "extra_info": {
                    "split": "test",
                    "index": i,
                    "id": q["id"],
                    "question": q["question"],
                    "dialect": "research",
                    "scheme": "research",
                    "template": template,
                },
                "agent_name": "search_agent",
            }
        )
    return rows


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Two benchmarks: three instruct rows and two rows (one base-template) of the bundled questions."""
    d = tmp_path_factory.mktemp("bench")
    pq.write_table(pa.Table.from_pylist(bench_rows("hotpotqa", QUESTIONS[:3])), d / "hotpotqa.parquet")
    rows = bench_rows("bamboogle", QUESTIONS[3:4]) + bench_rows("bamboogle", QUESTIONS[4:5], "base")
    pq.write_table(pa.Table.from_pylist(rows), d / "bamboogle.parquet")
    return [str(d / "hotpotqa.parquet"), str(d / "bamboogle.parquet")]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def rows_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def settings(data, model, out, **kw) -> EvalSettings:
    return EvalSettings(data=data, model=model, retriever="two_hop", out=str(out), progress=False, **kw)


def test_local_model_and_completions_endpoint_give_the_same_rows(bench, tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from research_plugin.verl.hf_generation import HFGenerationServer

    local = run_eval(settings(bench, str(tiny_model_dir), tmp_path / "local", response_length=48, concurrency=1))
    server = HFGenerationServer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    fake = FakeCompletions(tokenizer, "tiny-qwen2", hf_backend(server))
    try:
        remote = run_eval(
            settings(bench, fake.url("/v1"), tmp_path / "remote", tokenizer=str(tiny_model_dir), response_length=48,
                     concurrency=1)
        )  # fmt: skip
    finally:
        fake.stop()

    a, b = rows_of(tmp_path / "local"), rows_of(tmp_path / "remote")
    assert [r["key"] for r in a] == [f"hotpotqa.parquet#{i}" for i in range(3)] + [
        "bamboogle.parquet#0",
        "bamboogle.parquet#1",
    ]
    for x, y in zip(a, b):  # greedy, same model, same loop: the same trajectories whichever way it is served
        assert x["trajectory"] == y["trajectory"] and x["metrics"] == y["metrics"]
        assert x["question"] == y["question"] == QUESTIONS[int(x["id"][-3:]) - 1]["question"]
        assert x["gold"] == y["gold"] == QUESTIONS[int(x["id"][-3:]) - 1]["golden_answers"]
        assert 0 < x["metrics"]["response_tokens"] <= 48
    # what went over the wire: token-id prompts, the dialect's stop string kept in the output, the whole budget
    first = fake.requests[0]
    assert first["model"] == "tiny-qwen2" and isinstance(first["prompt"], list) and first["temperature"] == 0
    assert first["stop"] == ["</search>"] and first["include_stop_str_in_output"] and first["max_tokens"] == 48
    assert tokenizer.decode(first["prompt"]).startswith("<|im_start|>system\n")
    base_prompts = [r["prompt"] for r in fake.requests if not tokenizer.decode(r["prompt"]).startswith("<|im_start|>")]
    assert base_prompts and tokenizer.decode(base_prompts[0]).startswith("A conversation between User and Assistant")

    for summary, out in ((local, tmp_path / "local"), (remote, tmp_path / "remote")):
        assert summary["rows"] == summary["new"] == 5 and summary["failed"] == 0
        assert summary["benchmarks"]["hotpotqa"]["rows"] == 3 and summary["benchmarks"]["bamboogle"]["rows"] == 2
        assert json.loads((out / "summary.json").read_text()) == summary
        table = (out / "results.md").read_text()
        assert table.startswith("| Metric | bamboogle | hotpotqa | Average |") and "| LJ |" in table
    assert remote["benchmarks"] == local["benchmarks"]


def scripted(tokenizer):
    """A policy that follows orders: for each question, what to write before and after its first search."""
    plan = {
        QUESTIONS[0]["question"]: (
            " <think> One search. </think> <search> Ambrel </search>",
            " <answer> The answer is \\boxed{Ambrel} </answer>",
        ),
        QUESTIONS[2]["question"]: (
            " <think> One search. </think> <search> Saltreach </search>",
            " <answer> \\boxed{near Saltreach} </answer>",
        ),
        QUESTIONS[4]["question"]: ("I do not know.", None),
    }

    def script(prompt_text: str) -> str:
        question = next(q for q in plan if q in prompt_text)
        so_far = prompt_text.rsplit(question, 1)[-1]
        first, second = plan[question]
        return (first if "<result>" not in so_far else second) + "<|im_end|>"

    return scripted_backend(tokenizer, script)


def test_scripted_policy_scores_known_values_with_the_judge(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """Over a server that trims stop strings and returns no token ids (SGLang-like), with text prompts."""
    backend = scripted(tokenizer)
    in_flight, peak = 0, 0

    async def slow_backend(prompt_ids, params):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return await backend(prompt_ids, params)

    monkeypatch.setenv("POLICY_KEY_FOR_TEST", "policy-secret-77")
    fake = FakeCompletions(tokenizer, "scripted", slow_backend, vllm_extras=False, api_key="policy-secret-77")
    chat = FakeChat(same_meaning)
    pq.write_table(
        pa.Table.from_pylist(bench_rows("hotpotqa", [QUESTIONS[0], QUESTIONS[2]]) + bench_rows("nq", [QUESTIONS[4]])),
        tmp_path / "mixed.parquet",
    )
    data = [str(tmp_path / "mixed.parquet")]
    s = settings(
        data, fake.url("/v1/completions"), tmp_path / "out", tokenizer=str(tiny_model_dir), prompt_as="text",
        policy_key_env="POLICY_KEY_FOR_TEST", response_length=512, top_k=1, concurrency=2,
        judge_endpoint=chat.url("/v1"), judge_model="judge-model",
    )  # fmt: skip
    try:
        summary = run_eval(s)
        rows = {r["id"]: r for r in rows_of(tmp_path / "out")}
        assert all(isinstance(r["prompt"], str) for r in fake.requests)
        assert 1 < peak <= 2  # rows were in flight together, never more than the limit
        exact, cover = rows[QUESTIONS[0]["id"]], rows[QUESTIONS[2]["id"]]
        assert exact["prediction"] == "Ambrel" and cover["prediction"] == "near Saltreach"
        assert exact["trajectory"].count("<result>") == 1 and "Doc 1 (Title: Ambrel)" in exact["trajectory"]
        assert exact["metrics"]["em"] == 1.0 and exact["metrics"]["format"] == 1.0
        scores = answer_scores("near Saltreach", ["Saltreach"])
        assert {k: cover["metrics"][k] for k in scores} == scores
        for r in (exact, cover):
            assert r["metrics"]["num_searches"] == 1 and r["metrics"]["retrieval_recall"] == 1.0
            assert r["metrics"]["lj"] == 1.0 and r["metrics"]["reward"] > 0.1  # the ReSearch reward: F1 when > 0
            assert r["metrics"]["retrieved_tokens"] > 0
            assert (
                r["metrics"]["generated_tokens"] + r["metrics"]["retrieved_tokens"] == r["metrics"]["response_tokens"]
            )
        lost = rows[QUESTIONS[4]["id"]]
        assert lost["prediction"] is None and lost["format_error"] == "no think block"  # as the reward checks it
        assert lost["metrics"]["num_searches"] == 0 and lost["metrics"]["lj"] == 0.0

        hotpot, nq = summary["benchmarks"]["hotpotqa"], summary["benchmarks"]["nq"]
        assert hotpot["em"] == 0.5 and hotpot["cover_em"] == 1.0 and hotpot["lj"] == 1.0 and hotpot["malformed"] == 0
        assert hotpot["num_searches"] == 1.0 and hotpot["retrieval_recall"] == 1.0
        assert nq["em"] == 0.0 and nq["malformed"] == 1.0 and nq["lj"] == 0.0
        assert (
            summary["judge"]["asked"] == 2 and summary["judge"]["no_answer"] == 1 and summary["judge"]["failures"] == 0
        )
        table = (tmp_path / "out" / "results.md").read_text().splitlines()
        assert "| EM | 50.0 | 0.0 | 25.0 |" in table and "| LJ | 100.0 | 0.0 | 50.0 |" in table
        # the protocol the numbers follow: ReSearch's metrics and judge (the scheme's paper), retrieval, subset
        protocol = summary["protocol"]
        assert protocol["name"] == "research" and list(protocol["metrics"]) == ["EM", "F1", "LJ"]
        assert protocol["normalization"] == "squad" and protocol["judge"] == {
            "model": "judge-model",
            "prompt": "research",
        }
        assert (
            protocol["retriever"] == "two_hop"
            and protocol["top_k"] == 1
            and protocol["subset"]["rows"] == {"hotpotqa": 2, "nq": 1}
        )
        assert all('"judgement"' in r["messages"][-1]["content"] for r in chat.requests)
        for path in (tmp_path / "out").rglob("*"):
            assert path.is_dir() or "policy-secret-77" not in path.read_text()

        # a rerun finds every row done: no policy request, no judge request
        policy_calls, judge_calls = len(fake.requests), len(chat.requests)
        again = run_eval(s)
        assert again["resumed"] == 3 and again["new"] == 0 and again["benchmarks"] == summary["benchmarks"]
        assert len(fake.requests) == policy_calls and len(chat.requests) == judge_calls

        # a judge model the endpoint does not serve: the failures are recorded in the rows and the run goes on
        other = run_eval(dataclasses.replace(s, judge_model="other-model"))
        assert other["judge"]["failures"] == 2 and other["benchmarks"]["hotpotqa"]["lj"] is None
        assert all("HTTP 404" in r["judge_error"] for r in rows_of(tmp_path / "out") if r["prediction"])
        # back to the first judge model: its verdicts come from the disk cache, with no HTTP call
        judge_calls = len(chat.requests)
        back = run_eval(s)
        assert back["judge"]["from_cache"] == 2 and back["judge"]["failures"] == 0 and len(chat.requests) == judge_calls
        assert back["benchmarks"] == summary["benchmarks"]
    finally:
        fake.stop()
        chat.stop()


def test_policy_failures_are_recorded_and_retried_on_rerun(tiny_model_dir, tokenizer, tmp_path):
    backend = scripted(tokenizer)
    fake = FakeCompletions(tokenizer, "scripted", backend)
    rows = bench_rows("hotpotqa", [QUESTIONS[0], QUESTIONS[2]])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "two.parquet")
    s = settings([str(tmp_path / "two.parquet")], fake.url(""), tmp_path / "out", tokenizer=str(tiny_model_dir),
                 served_model="scripted", response_length=512, top_k=1, max_retries=1, concurrency=1)  # fmt: skip
    try:
        fake.fail_next = 10**6  # the endpoint answers 503 to everything
        summary = run_eval(s)
        assert summary["failed"] == 2 and summary["evaluated"] == 0
        assert "HTTP 503" in summary["first_failures"][0] and "after 2 attempts" in summary["first_failures"][0]
        assert len(fake.requests) == 4  # two rows, one retry each
        assert rows_of(tmp_path / "out") == []

        fake.fail_next = 0
        summary = run_eval(s)
        assert summary["failed"] == 0 and summary["new"] == 2 and summary["benchmarks"]["hotpotqa"]["em"] == 0.5
    finally:
        fake.stop()


def test_resume_after_a_killed_run(bench, tiny_model_dir, tmp_path):
    """Kill a CLI run mid-way (SIGKILL); the rerun keeps every finished row, redoes the rest, duplicates nothing."""
    rows = bench_rows("hotpotqa", QUESTIONS[:4]) + bench_rows("musique", QUESTIONS[4:8])
    data = tmp_path / "many.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    out = tmp_path / "out"
    args = ["--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--response-length", "64",
            "--concurrency", "1"]  # fmt: skip
    log = tmp_path / "eval.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "research_plugin.cli", "eval", *args], stdout=f, stderr=f)
    rows_file = out / "rows.jsonl"
    try:
        wait_until(lambda: rows_file.exists() and rows_file.read_text().count("\n") >= 2 or proc.poll(), timeout=300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    kept = {json.loads(line)["key"]: json.loads(line) for line in rows_file.read_text().splitlines() if line}
    assert 2 <= len(kept) < 8
    with rows_file.open("a") as f:
        f.write('{"key": "many.parquet#7", "data_source": "mus')  # as if the kill had torn a write

    summary = run_eval(settings([str(data)], str(tiny_model_dir), out, response_length=64, concurrency=4))
    final = rows_of(out)
    keys = [r["key"] for r in final]
    assert keys == [f"many.parquet#{i}" for i in range(8)]  # every row once, in dataset order
    for key, record in kept.items():
        assert next(r for r in final if r["key"] == key) == record  # finished rows kept as they were
    assert summary["resumed"] == len(kept) and summary["new"] == 8 - len(kept) and summary["failed"] == 0
    assert summary["benchmarks"]["hotpotqa"]["rows"] == 4 and summary["benchmarks"]["musique"]["rows"] == 4


def test_rerun_with_other_settings_or_bad_data_is_refused(bench, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps(settings(bench, str(tiny_model_dir), out).run_identity()))
    with pytest.raises(ValueError, match=r"other settings \(top_k: 5 -> 3\)"):
        run_eval(settings(bench, str(tiny_model_dir), out, top_k=3))
    with pytest.raises(ValueError, match="judge needs both"):
        run_eval(settings(bench, str(tiny_model_dir), out, judge_model="m"))

    bad = bench_rows("nq", QUESTIONS[:2])
    bad[1]["reward_model"]["ground_truth"] = []
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    proc = subprocess.run(
        [sys.executable, "-m", "research_plugin.cli", "eval", "--data", str(tmp_path / "bad.parquet"), "--model",
         str(tiny_model_dir), "--out", str(tmp_path / "bad-out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "bad.parquet: row 1: no reward_model.ground_truth" in proc.stderr


def test_a_server_context_smaller_than_the_response_budget(bench, tiny_model_dir, tokenizer, tmp_path, capsys):
    """As a new user meets vLLM's own server: the default budget (8192) exceeds its context. The context comes from
    /v1/models and bounds every request; the same server without it in its model card answers HTTP 400."""
    from transformers import AutoModelForCausalLM

    from research_plugin.verl.hf_generation import HFGenerationServer

    server = HFGenerationServer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    fake = FakeCompletions(tokenizer, "tiny-qwen2", hf_backend(server), max_model_len=400)
    hidden = FakeCompletions(tokenizer, "tiny-qwen2", hf_backend(server), max_model_len=400, advertise_context=False)
    try:
        common = dict(tokenizer=str(tiny_model_dir), concurrency=2, limit=2)
        summary = run_eval(settings(bench, fake.url("/v1"), tmp_path / "bounded", **common))
        said = capsys.readouterr().out
        failed = run_eval(settings(bench, hidden.url("/v1"), tmp_path / "unbounded", **common))
    finally:
        fake.stop()
        hidden.stop()
    assert summary["settings"]["response_length"] == 8192 and summary["failed"] == 0 and summary["evaluated"] == 4
    assert all(len(r["prompt"]) + r["max_tokens"] <= 400 for r in fake.requests)
    assert said.count("serves a context of 400 tokens") == 1
    # the untrained model writes on until the context is full: those trajectories are recorded as truncated
    assert any(row["ended_by_eos"] is False for row in rows_of(tmp_path / "bounded"))
    assert failed["failed"] == 4 and "HTTP 400" in failed["first_failures"][0]
