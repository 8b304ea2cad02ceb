"""``research-plugin prepare``: every published format → verl parquet, options, bad rows, atomic writes.

Fixtures in ``tests/fixtures/prepare/`` are small files we wrote in each dataset's published format (about
our own fictional world), bad rows included. The last tests load a prepared file with verl's own
``RLHFDataset`` and run its rows through verl's ``AgentLoopWorker`` with the search agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from research_plugin.core.papers import PAPERS
from research_plugin.core.prompts import base_prompt, chat_messages
from research_plugin.core.rewards import SCHEMES
from research_plugin.prepare import PrepareError, Source, prepare
from research_plugin.prepare.readers import InputError
from research_plugin.prepare.rows import schema
from research_plugin.prepare.selection import mix_quotas

FIXTURES = Path(__file__).parent / "fixtures" / "prepare"

# file, detected format, records read, good rows, bad rows, (id, question start, answers) of one good row
CASES = [
    (
        "flashrag_hotpotqa_dev.jsonl",
        "flashrag",
        6,
        4,
        ["line 5: no answer: 'golden_answers' is empty", "line 6: invalid JSON"],
        ("dev_0", "Which river flows", ["Quessa River", "the Quessa"]),
    ),
    (
        "musique_ans_v1.0_train.jsonl",
        "musique",
        6,
        4,
        ["line 5: no question: no 'question' field", "line 6: 'answerable' is str, not a boolean"],
        ("2hop__1001_2001", "Where was the founder", ["Keddle", "Keddle harbour"]),
    ),
    (
        "hotpot_train_v1.1.json",
        "hotpotqa",
        5,
        3,
        ["record 3 (line 65): no answer: no 'answer' field", "record 4 (line 73): no question: 'question' is list"],
        ("5f00a1b2c3d4e5f600000005", "What currency", ["the varen"]),
    ),
    (
        "2wikimultihopqa_train.json",
        "2wiki",
        5,
        4,
        ["record 4 (line 1): 'answer' is int, not a string or a list of strings"],
        ("c1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d8", "Who is the grandfather", ["Ruben Quill"]),
    ),
    (
        "bamboogle.csv",
        "qa",
        5,
        3,
        ["line 4: no answer: 'answer' is empty", "line 6: 1 more cell(s) than the header"],
        ("x-2", "What sea does the river of Keddle, a harbour town", ["Amber Sea"]),
    ),
    (
        "bamboogle.jsonl",
        "qa",
        4,
        3,
        ["line 3: no question: 'question' is empty"],
        ("x-4", "In what year", ["1840"]),
    ),
    (
        "nq_test.jsonl",
        "flashrag",
        5,
        4,
        ["line 5: golden_answers[1] is int, not a string"],
        ("test_3", "how long is the quessa", ["412 kilometres"]),
    ),
    (
        "triviaqa_dev.jsonl",
        "flashrag",
        3,
        2,
        ["line 3: no question: no 'question' field"],
        ("dev_0", "Which industrialist", ["Ilsa Marrow", "Marrow", "ILSA MARROW"]),
    ),
    ("popqa_test.jsonl", "flashrag", 3, 3, [], ("1585672", "In what city", ["Keddle"])),
    (
        "r1_searcher_stage_2.jsonl",
        "r1_searcher",
        6,
        4,
        ["line 4: 'idx' is dict, not a string or an integer", "line 5: no question: 'question' is empty"],
        ("2", "Which grandfather of Tobias Quill", ["Ruben Quill", "Ruben"]),
    ),
]


def run(sources, out: Path, **options) -> tuple[dict, list[str]]:
    warnings: list[str] = []
    if isinstance(sources, (str, Path)):
        sources = [Source("x", Path(sources))]
    report = prepare(sources, out, warn=warnings.append, **options)
    return report, warnings


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def flashrag_rows(prefix: str, n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"{prefix}{i}", "question": f"What is fact number {i} about {prefix}?", "golden_answers": [f"a{i}"]}
        for i in range(start, start + n)
    ]


@pytest.mark.parametrize("name, fmt, records, good, bad, sample", CASES, ids=[c[0] for c in CASES])
def test_each_published_format_becomes_verl_rows(tmp_path, name, fmt, records, good, bad, sample):
    out = tmp_path / "out.parquet"
    report, warnings = run(FIXTURES / name, out, max_bad="50%", split="dev")

    (src,) = report["sources"]
    assert (src["format"], src["records"], src["bad"], src["rows"]) == (fmt, records, len(bad), good)
    assert report["rows"] == good and report["bad"] == len(bad)
    for expected, line in zip(bad, warnings):  # every bad row reported with its place in the file
        assert line.startswith(f"{FIXTURES / name} {expected}")
    assert len(warnings) == len(bad)

    assert pq.read_schema(out).equals(schema("instruct"), check_metadata=False)
    df = pd.read_parquet(out)
    verl = ["data_source", "prompt", "ability", "reward_model", "extra_info", "agent_name"]
    assert list(df.columns) == [*verl, "input", "label", "datasource"]  # the last three: OpenRLHF's keys
    assert len(df) == good
    assert set(df.agent_name) == {"search_agent"} and set(df.data_source) == {"x"}
    assert [e["index"] for e in df.extra_info] == list(range(good))
    assert len({e["id"] for e in df.extra_info}) == good

    ident, question_start, answers = sample
    (row,) = [r for _, r in df.iterrows() if r.extra_info["id"] == ident]
    info = row.extra_info
    assert info["question"].startswith(question_start)
    assert list(row.reward_model["ground_truth"]) == answers and row.reward_model["style"] == "rule"
    expected_info = {"split": "dev", "dialect": "research", "scheme": "research", "template": "instruct"}
    assert {k: info[k] for k in expected_info} == expected_info
    assert [dict(m) for m in row.prompt] == chat_messages(info["question"], "research")


def test_base_template_and_dialect(tmp_path):
    out = tmp_path / "base.parquet"
    run(FIXTURES / "popqa_test.jsonl", out, dialect="r1_searcher", template="base", scheme="r1_stage1")
    df = pd.read_parquet(out)
    for _, row in df.iterrows():
        (message,) = row.prompt
        assert message["role"] == "user"
        # R1-Searcher's prompts open the think block after "Assistant:", and the row says so for the reward
        assert message["content"] == base_prompt(row.extra_info["question"], "r1_searcher", opens_think=True)
        assert message["content"].endswith("Assistant: <think>") and row.extra_info["opens_think"]
        assert row.extra_info["template"] == "base" and row.extra_info["dialect"] == "r1_searcher"
        assert row.extra_info["scheme"] == "r1_stage1"
    run(FIXTURES / "popqa_test.jsonl", out, dialect="r1_searcher", template="base", opens_think=False)
    row = pd.read_parquet(out).iloc[0]
    assert row.prompt[0]["content"].endswith("Assistant:") and not row.extra_info["opens_think"]
    run(FIXTURES / "popqa_test.jsonl", out, dialect="research", template="base")
    row = pd.read_parquet(out).iloc[0]
    assert row.prompt[0]["content"].endswith("Assistant:") and not row.extra_info["opens_think"]


def test_each_papers_record_names_things_that_exist_and_belong_to_it():
    """The paper records index the other tables: its default scheme is one of its dialect's, its evaluation names
    a known normalisation, metrics and judge prompt, and every dialect is a paper's."""
    from research_plugin.core.answer_metrics import NORMALIZATIONS
    from research_plugin.core.dialects import DIALECTS
    from research_plugin.evaluation.protocols import DEFINITIONS, JUDGE_PROMPTS, protocol_for_scheme

    assert set(PAPERS) == set(DIALECTS)
    for name, paper in PAPERS.items():
        assert SCHEMES[paper.default_scheme].dialect == name == paper.dialect.name
        assert paper.normalization in NORMALIZATIONS and paper.judge_prompt in JUDGE_PROMPTS
        assert {key for _, key in paper.metrics} <= set(DEFINITIONS)
        assert protocol_for_scheme(paper.default_scheme).paper == paper.title


def test_too_many_bad_rows_fail_without_a_file(tmp_path):
    out = tmp_path / "out.parquet"
    with pytest.raises(PrepareError, match=r"2 of 6 rows are bad \(allowed: 1"):
        run(FIXTURES / "musique_ans_v1.0_train.jsonl", out, max_bad="1")
    with pytest.raises(PrepareError, match=r"allowed: 0"):
        run(FIXTURES / "musique_ans_v1.0_train.jsonl", out, max_bad="10%")  # of 6 records: 0.6 -> 0
    assert list(tmp_path.iterdir()) == []
    report, _ = run(FIXTURES / "musique_ans_v1.0_train.jsonl", out, max_bad="2")
    assert report["rows"] == 4 and out.exists()
    with pytest.raises(PrepareError, match="--max-bad"):
        run(FIXTURES / "popqa_test.jsonl", out, max_bad="lots")


def test_a_failed_run_leaves_the_previous_file_untouched(tmp_path, monkeypatch):
    out = tmp_path / "out.parquet"
    run(FIXTURES / "popqa_test.jsonl", out)
    before = out.read_bytes()
    with pytest.raises(PrepareError):
        run(FIXTURES / "nq_test.jsonl", out)  # one bad row, none allowed

    def crash_midway(table, where, **kwargs):  # the disk fills up half-way through the write
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr("research_plugin.prepare.rows.pq.write_table", crash_midway)
    with pytest.raises(OSError, match="No space"):
        run(FIXTURES / "bamboogle.jsonl", out, max_bad=1)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_format_override_and_undetectable_files(tmp_path):
    out = tmp_path / "out.parquet"
    with pytest.raises(PrepareError, match="4 of 4 rows are bad"):
        run(FIXTURES / "bamboogle.jsonl", out, fmt="flashrag")  # Question/Answer records are not FlashRAG's
    report, _ = run(FIXTURES / "r1_searcher_stage_2.jsonl", tmp_path / "qa.parquet", fmt="qa", max_bad=2)
    assert report["sources"][0]["format"] == "qa" and report["rows"] == 4
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"query": "q?", "label": "a"}])
    with pytest.raises(PrepareError, match="cannot tell its format.*--format"):
        run(odd, out)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"_id": "1", "question": "q?", "answer": "a"},\n {"_id": "2", "question": }]')
    with pytest.raises(InputError, match="not a JSON array: .* at line 2"):
        run(broken, out)
    with pytest.raises(InputError, match="no such file"):
        run(tmp_path / "missing.jsonl", out)
    assert not out.exists()


def test_sample_is_reproducible_with_a_seed(tmp_path):
    src = write_jsonl(tmp_path / "nq.jsonl", flashrag_rows("nq", 200))
    ids = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"s{seed}.parquet"
        run(src, out, sample=50, seed=seed)
        ids.setdefault(seed, []).append([e["id"] for e in pd.read_parquet(out).extra_info])
    assert ids[0][0] == ids[0][1] and len(ids[0][0]) == 50
    assert ids[0][0] != ids[1][0]
    assert ids[0][0] == sorted(ids[0][0], key=lambda s: int(s[2:]))  # file order kept
    with pytest.raises(PrepareError, match="more rows than the 200"):
        run(src, tmp_path / "big.parquet", sample=201)


def test_answerable_only_drops_unanswerable_musique_rows(tmp_path):
    out = tmp_path / "out.parquet"
    report, _ = run(FIXTURES / "musique_ans_v1.0_train.jsonl", out, answerable_only=True, max_bad=2)
    assert report["sources"][0]["unanswerable"] == 1 and report["rows"] == 3
    assert "2hop__1003_2003" not in {e["id"] for e in pd.read_parquet(out).extra_info}


def test_weighted_mix_of_hotpotqa_and_2wiki(tmp_path):
    hotpot = tmp_path / "hotpot.json"
    hotpot.write_text(json.dumps([{"_id": f"h{i}", "question": f"hotpot q{i}?", "answer": "a"} for i in range(100)]))
    wiki = tmp_path / "2wiki.json"
    wiki.write_text(
        json.dumps([{"_id": f"w{i}", "question": f"2wiki q{i}?", "answer": "b", "evidences": []} for i in range(60)])
    )
    sources = [Source("hotpotqa", hotpot, 1.0), Source("2wikimultihopqa", wiki, 1.0)]
    out = tmp_path / "mix.parquet"

    report, _ = run(sources, out)  # no size: the largest 1:1 mix the inputs allow
    assert [s["rows"] for s in report["sources"]] == [60, 60]
    assert [s["format"] for s in report["sources"]] == ["hotpotqa", "2wiki"]

    weighted = [Source("hotpotqa", hotpot, 3.0), Source("2wikimultihopqa", wiki, 2.0)]
    report, _ = run(weighted, out, sample=50, seed=7)
    df = pd.read_parquet(out)
    assert df.data_source.value_counts().to_dict() == {"hotpotqa": 30, "2wikimultihopqa": 20}
    assert [e["index"] for e in df.extra_info] == list(range(50))
    first = [e["id"] for e in df.extra_info]
    run(weighted, out, sample=50, seed=7)
    assert [e["id"] for e in pd.read_parquet(out).extra_info] == first

    with pytest.raises(PrepareError, match="needs 70 from source 2, which has 60"):
        run([Source("hotpotqa", hotpot, 1.0), Source("2wikimultihopqa", wiki, 1.0)], out, sample=140)
    with pytest.raises(PrepareError, match="give every input a weight"):
        run([Source("hotpotqa", hotpot, 1.0), Source("2wikimultihopqa", wiki)], out)


def test_mix_quotas():
    assert mix_quotas([100, 60], [1, 1]) == [60, 60]
    assert mix_quotas([100, 100, 100], [1, 1, 1], 10) == [4, 3, 3]
    assert mix_quotas([7, 100], [1, 2]) == [7, 14]
    with pytest.raises(ValueError, match="positive"):
        mix_quotas([1, 1], [1, 0])


def test_dedupe_against_an_eval_set(tmp_path):
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"id": "t1", "question": "Who founded the Orvell Glassworks?", "golden_answers": ["Ilsa Marrow"]},
            {"id": "t2", "question": "What is the capital of Varenholt", "golden_answers": ["Lune"]},
            {"id": "t3", "question": "Into which sea does the Quessa River flow?", "golden_answers": ["Amber Sea"]},
        ],
    )
    out = tmp_path / "train.parquet"
    # nq_test has "who founded the orvell glassworks" and "what is the capital of varenholt" (other case/punct)
    report, warnings = run(train, out, dedupe_against=[FIXTURES / "nq_test.jsonl"])
    assert report["sources"][0]["in_eval"] == 2 and report["rows"] == 1
    assert warnings == [f"{FIXTURES / 'nq_test.jsonl'}: 1 bad rows ignored for --dedupe-against"]
    assert [e["id"] for e in pd.read_parquet(out).extra_info] == ["t3"]

    # a prepared parquet works as the eval set too
    eval_parquet = tmp_path / "eval.parquet"
    run(FIXTURES / "popqa_test.jsonl", eval_parquet, split="test")  # has "What is the capital of Varenholt?"
    report, _ = run(train, out, dedupe_against=[eval_parquet])
    assert report["sources"][0]["in_eval"] == 1 and report["rows"] == 2


def test_a_prepared_file_can_be_prepared_again(tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    run(FIXTURES / "popqa_test.jsonl", first)
    report, _ = run(first, second, template="base", dialect="search_r1")
    assert report["sources"][0]["format"] == "verl"
    a, b = pd.read_parquet(first), pd.read_parquet(second)
    assert [e["id"] for e in a.extra_info] == [e["id"] for e in b.extra_info]
    assert [list(r["ground_truth"]) for r in a.reward_model] == [list(r["ground_truth"]) for r in b.reward_model]
    assert {e["scheme"] for e in b.extra_info} == {"search_r1_em"}


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "research_plugin.cli", "prepare", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_prepare_and_mix(tmp_path):
    out = tmp_path / "musique.parquet"
    res = cli("musique", "--input", str(FIXTURES / "musique_ans_v1.0_train.jsonl"), "--out", str(out))
    assert res.returncode == 2 and not out.exists()
    assert "line 5: no question" in res.stderr and "2 of 6 rows are bad (allowed: 0" in res.stderr

    res = cli(
        "musique",
        *("--input", str(FIXTURES / "musique_ans_v1.0_train.jsonl"), "--out", str(out)),
        *("--max-bad", "2", "--answerable-only", "--template", "base", "--dialect", "search_r1", "--split", "dev"),
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["rows"] == 3 and report["sources"][0]["unanswerable"] == 1
    assert set(pd.read_parquet(out).data_source) == {"musique"}

    mix = tmp_path / "mix.parquet"
    res = cli(
        "r1_mix",
        *("--input", f"hotpotqa={FIXTURES / 'hotpot_train_v1.1.json'}"),
        *("--input", f"2wikimultihopqa={FIXTURES / '2wikimultihopqa_train.json'}"),
        *("--weight", "hotpotqa=1", "--weight", "2wikimultihopqa=1", "--max-bad", "3", "--out", str(mix)),
    )
    assert res.returncode == 0, res.stderr
    assert pd.read_parquet(mix).data_source.value_counts().to_dict() == {"hotpotqa": 3, "2wikimultihopqa": 3}

    res = cli("x", "--input", f"a={FIXTURES / 'popqa_test.jsonl'}", "--weight", "b=1", "--out", str(mix))
    assert res.returncode == 2 and "one weight per input name" in res.stderr


# -- through verl: RLHFDataset (the real class) and the search agent in verl's AgentLoopWorker ---------------


@pytest.mark.parametrize("template, dialect", [("instruct", "research"), ("base", "search_r1")])
def test_verl_dataset_rows_run_through_the_search_agent(tmp_path, tiny_model_dir, template, dialect):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from research_plugin.verl.hf_generation import HFGenerationServer
    from research_plugin.verl.local_rollout import run_agent_loop, trainer_config

    out = tmp_path / "musique.parquet"
    run(FIXTURES / "musique_ans_v1.0_train.jsonl", out, max_bad=2, template=template, dialect=dialect)
    config = trainer_config(
        tiny_model_dir,
        response_length=24,
        overrides=[
            "+search_agent.retriever=two_hop",
            "data.max_prompt_length=1024",
            "data.filter_overlong_prompts=True",  # verl's length filter applies the chat template to our column
        ],
    )
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    dataset = RLHFDataset([str(out)], tok, config.data)
    assert len(dataset) == 4  # nothing lost to the filter (it drops rows whose template fails)

    items = [dataset[i] for i in range(len(dataset))]
    frame = pd.read_parquet(out)
    for item, (_, row) in zip(items, frame.iterrows()):
        assert item["raw_prompt"] == [dict(m) for m in row.prompt]
        assert item["agent_name"] == "search_agent" and item["index"] == row.extra_info["index"]
        assert item["extra_info"]["dialect"] == dialect and item["extra_info"]["template"] == template

    batch = DataProto.from_single_dict(collate_fn(items))
    server = HFGenerationServer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok)
    result = run_agent_loop(config, server, batch)

    assert list(result.non_tensor_batch["dialect"]) == [dialect] * 4  # extra_info.dialect reached the loop
    assert len(result.non_tensor_batch["score"]) == 4
    prompts, attention = result.batch["prompts"], result.batch["attention_mask"][:, : result.batch["prompts"].shape[1]]
    for i, item in enumerate(items):
        seen = prompts[i][attention[i].bool()].tolist()
        question = item["extra_info"]["question"]
        if template == "base":  # the raw template exactly as prepare wrote it, no chat markup
            assert seen == tok.encode(base_prompt(question, dialect))
        else:
            expected = tok.apply_chat_template(chat_messages(question, dialect), add_generation_prompt=True)
            assert seen == list(getattr(expected, "input_ids", expected))
