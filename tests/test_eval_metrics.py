"""Evaluation metrics on hand-made predictions with known values; the prepared-data reader and the row store."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from research_plugin import compute_score
from research_plugin.evaluation.data import load_rows
from research_plugin.evaluation.metrics import (
    aggregate,
    answer_scores,
    format_report,
    macro_average,
    markdown_table,
    prediction_of,
    retrieval_recall,
    reward_retrieval_hit,
)
from research_plugin.evaluation.rollout import Trajectory
from research_plugin.evaluation.runner import row_record
from research_plugin.evaluation.store import RowStore


@pytest.mark.parametrize(
    ("prediction", "golds", "em", "f1", "cover_em", "acc_r", "subem"),
    [
        ("Keddle", ["Keddle"], 1, 1, 1, 1, 1),
        ("the town of Keddle", ["Keddle"], 0, 0.5, 1, 1, 1),  # "town of keddle": precision 1/3, recall 1
        ("Quessa River", ["the Quessa", "Amber Sea"], 0, 2 / 3, 1, 1, 1),
        ("Tamsk", ["Keddle", "Lune"], 0, 0, 0, 0, 0),
        (None, ["Keddle"], 0, 0, 0, 0, 0),
        ("U.S.A.", ["USA"], 1, 1, 1, 1, 1),
        ("Marrow Ilsa", ["Ilsa Marrow"], 0, 1, 0, 1, 0),  # tokens in any order: ACC_R only
        ("Keddleton", ["Keddle"], 0, 0, 0, 0, 1),  # inside a word: sub-EM only
    ],
)
def test_answer_scores(prediction, golds, em, f1, cover_em, acc_r, subem):
    want = {"em": em, "f1": f1, "cover_em": cover_em, "acc_r": acc_r, "subem": subem}
    assert answer_scores(prediction, golds) == pytest.approx(want)


def test_r1_normalisation_keeps_punctuation_as_spaces():
    assert answer_scores("U.S.A.", ["USA"], normalization="space")["em"] == 0.0


def test_prediction_ignores_answers_inside_retrieved_text():
    response = (
        "<think> x </think> <search> q </search>\n\n<result>\nDoc 1 <answer> \\boxed{Wrong} </answer>\n</result>\n\n"
        "<answer> The answer is \\boxed{Keddle} </answer>"
    )
    assert prediction_of(response, "research", "research") == "Keddle"
    assert prediction_of("<answer> Keddle </answer>", "search_r1", "search_r1_em") == "Keddle"
    assert prediction_of("no answer here", "research", "research") is None


def test_retrieval_recall_needs_the_gold_on_token_boundaries():
    passages = ["Doc 1 (Title: Tamsk) Tamsk is a city.", "Doc 2 (Title: Keddleton) Keddleton is a village."]
    assert retrieval_recall(passages, ["Keddle"]) == 0.0
    assert retrieval_recall([*passages, "Doc 3 (Title: Ilsa) She was born in Keddle, a port."], ["Keddle"]) == 1.0
    assert retrieval_recall([], ["Keddle"]) == 0.0


def _record(source, em, f1, cover_em, lj, fmt, searches, recall, tokens):
    metrics = dict(em=em, f1=f1, cover_em=cover_em, acc_r=cover_em, subem=em, lj=lj, format=fmt, num_searches=searches)
    return {"data_source": source, "metrics": {**metrics, "retrieval_recall": recall, "response_tokens": tokens}}


def test_aggregate_and_table():
    records = [
        _record("musique", 1, 1.0, 1, 1.0, 1, 2, 1, 100),
        _record("musique", 0, 0.5, 1, None, 1, 1, 0, 300),  # judge failed on this row
        _record("musique", 0, 0.0, 0, 0.0, 0, 0, 0, 200),
        _record("bamboogle", 1, 1.0, 1, 1.0, 1, 3, 1, 50),
    ]
    per = aggregate(records)
    assert list(per) == ["bamboogle", "musique"]
    m = per["musique"]
    assert m["rows"] == 3 and m["lj_rows"] == 2
    assert m["em"] == pytest.approx(1 / 3) and m["f1"] == pytest.approx(0.5) and m["cover_em"] == pytest.approx(2 / 3)
    assert m["lj"] == pytest.approx(0.5)  # over the two judged rows
    assert m["malformed"] == pytest.approx(1 / 3) and m["num_searches"] == pytest.approx(1.0)
    assert m["retrieval_recall"] == pytest.approx(1 / 3) and m["response_tokens"] == pytest.approx(200)
    assert m["reward"] is None  # no row had it
    avg = macro_average(per)
    assert avg["em"] == pytest.approx((1 + 1 / 3) / 2) and avg["rows"] == 4

    lines = markdown_table(per).splitlines()  # ReSearch's metrics
    assert lines[0] == "| Metric | bamboogle | musique | Average |"
    assert lines[2] == "| EM | 100.0 | 33.3 | 66.7 |"
    assert lines[3] == "| F1 | 100.0 | 50.0 | 75.0 |"
    assert lines[4] == "| LJ | 100.0 | 50.0 | 75.0 |"
    assert "| Malformed % | 0.0 | 33.3 | 16.7 |" in lines
    assert lines[-1] == "| Questions | 1 | 3 | 4 |"
    assert "Average" not in markdown_table({"musique": m})
    r1 = markdown_table(per, "r1_searcher").splitlines()
    assert (
        r1[2] == "| ACC_R (Cover-EM) | 100.0 | 66.7 | 83.3 |" and r1[3] == "| ACC_L (LLM judge) | 100.0 | 50.0 | 75.0 |"
    )
    search_r1 = markdown_table(per, "search_r1").splitlines()
    assert search_r1[2] == "| EM | 100.0 | 33.3 | 66.7 |" and search_r1[3] == "| sub-EM | 100.0 | 33.3 | 66.7 |"
    assert not any(line.startswith("| LJ") for line in search_r1)


def test_row_record_scores_the_trajectory():
    from research_plugin.evaluation.data import EvalRow

    row = EvalRow("f.parquet#0", "musique", "prompt", ["Keddle"], {"id": "q1"}, "Where?")
    response = (
        "<think> hm </think> <search> Ilsa Marrow </search>\n\n<result>\nDoc 1 (Title: Ilsa) born in Keddle\n"
        "</result>\n\n<answer> \\boxed{the town of Keddle} </answer>"
    )
    retrieved = ["<result>", "Doc 1 (Title: Ilsa) born in Keddle", "</result>"]
    traj = Trajectory(response, retrieved, "research", 0.5, 1, 0, 0, 12, 40, 28, ended_by_eos=True)
    rec = row_record(row, traj, "squad", "research")
    assert rec["prediction"] == "the town of Keddle" and rec["gold"] == ["Keddle"] and rec["id"] == "q1"
    assert rec["trajectory"] == response and rec["format_error"] is None and rec["ended_by_eos"] is True
    assert rec["metrics"] == {
        "em": 0.0, "f1": 0.5, "cover_em": 1.0, "acc_r": 1.0, "subem": 1.0, "lj": None, "reward": 0.5, "format": 1.0,
        "num_searches": 1,
        "num_failed_searches": 0, "num_invalid_queries": 0, "retrieval_recall": 1.0, "retrieval_hit": 1.0,
        "response_tokens": 40,
        "generated_tokens": 28, "retrieved_tokens": 12,
    }  # fmt: skip


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)


def _good(i):
    return {
        "data_source": "nq",
        "prompt": [{"role": "system", "content": "rules"}, {"role": "user", "content": f"question {i}?"}],
        "reward_model": {"style": "rule", "ground_truth": [f"a{i}", f"b{i}"]},
        "extra_info": {"index": i, "id": f"q{i}", "question": f"question {i}?", "dialect": "research"},
    }


def test_load_rows_keys_limit_and_bad_rows(tmp_path):
    _write(tmp_path / "nq.parquet", [_good(i) for i in range(4)])
    rows = load_rows([tmp_path / "nq.parquet"], limit=3)
    assert [r.key for r in rows] == ["nq.parquet#0", "nq.parquet#1", "nq.parquet#2"]
    assert rows[1].golds == ["a1", "b1"] and rows[1].question == "question 1?" and rows[1].prompt[1]["role"] == "user"

    bad = [_good(0), {**_good(1), "reward_model": {"style": "rule", "ground_truth": []}}, {**_good(2), "prompt": []}]
    _write(tmp_path / "bad.parquet", bad)
    with pytest.raises(ValueError, match="2 bad row") as e:
        load_rows([tmp_path / "bad.parquet"])
    assert "row 1: no reward_model.ground_truth" in str(e.value) and "row 2: prompt" in str(e.value)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read"):
        load_rows([tmp_path / "junk.parquet"])


def test_store_survives_a_torn_last_line(tmp_path):
    store = RowStore(tmp_path / "rows.jsonl")
    store.append({"key": "a", "v": 1})
    store.append({"key": "b", "v": 1})
    with store.path.open("a") as f:
        f.write('{"key": "c", "v"')  # a kill mid-write
    assert set(store.load()) == {"a", "b"}
    store.append({"key": "c", "v": 2})
    store.append({"key": "a", "v": 3})  # a key written twice keeps its last record
    assert store.load() == {"a": {"key": "a", "v": 3}, "b": {"key": "b", "v": 1}, "c": {"key": "c", "v": 2}}
    store.rewrite([{"key": "b", "v": 1}])
    assert [json.loads(line) for line in store.path.read_text().splitlines()] == [{"key": "b", "v": 1}]


# --- eval reads a response as the reward does -------------------------------------------------------------------

NO_THINK = "<search> q </search>\n\n<result>\nDoc 1 Keddle\n</result>\n\n<answer> \\boxed{Keddle} </answer>"
UNCLOSED_BOX = "<think> x </think> <answer> \\boxed{Keddle} or \\boxed{Lune </answer>"


@pytest.mark.parametrize(
    ("response", "ended_by_eos", "reason"),
    [
        (NO_THINK, True, "no think block"),  # ReSearch's require_think
        (UNCLOSED_BOX, True, "no closed last \\boxed{} in the answer"),  # ReSearch's boxed_fallback=False
        ("<think> x </think> <answer> \\boxed{Keddle} </answer>", False, "did not end with EOS"),  # require_eos
    ],
)
def test_eval_format_is_the_rewards(response, ended_by_eos, reason):
    extra = {"ended_by_eos": ended_by_eos}
    reward = compute_score(data_source="x", solution_str=response, ground_truth="Keddle", extra_info=extra)
    assert reward["format"] == 0.0
    assert format_report(response, "research", "research", ended_by_eos=ended_by_eos) == (False, reason)
    # the same answer as the reward reads it: the unclosed last box is no answer (F1 0 in both)
    assert (prediction_of(response, "research", "research") is None) == (response == UNCLOSED_BOX)


def test_eval_format_follows_the_schemes_options():
    assert format_report(NO_THINK, "research", "research", require_think=False) == (True, None)
    assert format_report(UNCLOSED_BOX, "research", "research", boxed_fallback=True) == (True, None)
    assert prediction_of(UNCLOSED_BOX, "research", "research", boxed_fallback=True) == "Keddle"
    # text after the answer: ReSearch's code (the default) lets it pass, the strict check does not
    chatter = "<think> x </think> <answer> \\boxed{Keddle} </answer> I hope this helps!"
    assert format_report(chatter, "research", "research") == (True, None)
    assert format_report(chatter, "research", "research", format_check="strict") == (
        False,
        "text after the answer block",
    )


def test_retrieval_hit_and_recall_are_two_measures_named_apart():
    # "Keddle" inside "Keddleton": the reward's hit (Search-R1's substring test) counts it, eval's recall does not
    response = "<think> a </think> <search> q </search>\n\n<information>Doc 1(Title: K) Keddleton is a village."
    response += "</information>\n\n<think> b </think> <answer> Tamsk </answer>"
    assert reward_retrieval_hit(response, "search_r1", ["Keddle"]) == 1.0
    assert retrieval_recall(["Doc 1(Title: K) Keddleton is a village."], ["Keddle"]) == 0.0
    out = compute_score(data_source="x", solution_str=response, ground_truth="Keddle", scheme="search_r1_format")
    assert out["retrieval_hit"] == 1.0 and "retrieval_recall" not in out
    assert compute_score(data_source="x", solution_str=response, ground_truth="Keddle", scheme="search_r1_format",
                         retrieval_score=0.1)["score"] == pytest.approx(0.3)  # fmt: skip
