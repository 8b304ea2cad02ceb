import re
from types import SimpleNamespace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from research_plugin import compute_score
from research_plugin.core.dialects import (
    ANSWER_READINGS,
    DIALECTS,
    answer_block,
    extract_answer,
    extract_boxed,
    extract_query,
    format_passages,
    get_dialect,
    result_block,
    stopped_at_query,
    strip_results,
)
from research_plugin.core.format_check import (
    FormatReport,
    check_format,
    check_r1_searcher_code,
    check_research_code,
)
from research_plugin.core.prompts import base_prompt, chat_messages, system_prompt
from research_plugin.core.rewards import SCHEMES

from .strategies import any_text, dialects, golds

RESEARCH = DIALECTS["research"]
R1 = DIALECTS["r1_searcher"]
SEARCH_R1 = DIALECTS["search_r1"]


@pytest.fixture(params=sorted(DIALECTS))
def d(request):
    return DIALECTS[request.param]


def test_get_dialect():
    assert get_dialect("research") is RESEARCH
    assert get_dialect(R1) is R1
    with pytest.raises(ValueError, match="r1_searcher"):
        get_dialect("nope")


def test_extract_query(d):
    o, c = d.query_open, d.query_close
    assert extract_query(f"think {o}  first  {c}", d) == "first"
    # the last open tag before the final close wins
    assert extract_query(f"{o} a {c} result {o} b {c}", d) == "b"
    assert extract_query(f"{o} stale {o} fresh {c}", d) == "fresh"
    assert extract_query(f"{o}{c}", d) == ""
    assert extract_query(f"no open tag {c}", d) is None
    assert extract_query(f"{o} unclosed", d) is None
    assert extract_query("", d) is None


def test_stopped_at_query(d):
    assert stopped_at_query(f"{d.query_open} q {d.query_close}\n", d)
    assert not stopped_at_query(f"{d.query_open} q {d.query_close} more", d)


def test_extract_answer():
    assert extract_answer("<answer> \\boxed{\\frac{1}{2}} </answer>", RESEARCH) == "\\frac{1}{2}"
    assert extract_answer("<answer> so \\boxed{a} or \\boxed{ b } </answer>", RESEARCH) == "b"
    assert extract_answer("<answer> no box </answer>", RESEARCH) is None
    assert extract_answer("<answer> \\boxed{open </answer>", RESEARCH) is None
    assert extract_answer("<answer> one </answer><answer>  two </answer>", SEARCH_R1) == "two"
    assert extract_answer("<answer> Paris </answer>", R1) == "Paris"
    assert extract_answer("</answer> no open", SEARCH_R1) is None
    assert extract_answer("no tags", SEARCH_R1) is None


def test_extract_boxed():
    assert extract_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{x} then \\boxed{y") == "x"  # unclosed last box: an earlier one
    assert extract_boxed("\\boxed{ {a} }") == "{a}"
    assert extract_boxed("nothing") is None


def test_format_passages_and_result_block(d):
    passages = [
        SimpleNamespace(title="Paris", text="Paris is\n the   capital."),
        SimpleNamespace(title="", text="Untitled text."),
    ]
    body = format_passages(passages)
    assert body == "Doc 1 (Title: Paris) Paris is the capital.\nDoc 2 Untitled text."
    assert format_passages([]) == ""
    block = result_block(f"  {body}\n", d)
    inner = body if d.name == "search_r1" else f"\n{body}\n"  # Search-R1's code: no line breaks inside the tags
    assert block == f"\n\n{d.result_open}{inner}{d.result_close}\n\n"


def test_each_dialect_renders_documents_as_its_paper():
    passages = [SimpleNamespace(title="Paris", text="Paris is\n the capital."), SimpleNamespace(title="", text="x")]
    research = "Doc 1 (Title: Paris) Paris is the capital.\nDoc 2 x"
    assert format_passages(passages, "research") == format_passages(passages) == research  # the shipped policy's
    assert format_passages(passages, "r1_searcher") == "(1)Paris. Paris is the capital.\n(2)x"  # f"({j+1}){doc}"
    assert format_passages(passages, "search_r1") == "Doc 1(Title: Paris) Paris is the capital.\nDoc 2 x"
    sr1 = DIALECTS["search_r1"]
    assert result_block("Doc 1(Title: P) t", sr1) == "\n\n<information>Doc 1(Title: P) t</information>\n\n"


def test_strip_results(d):
    q = f"{d.query_open} q {d.query_close}"
    text = q + result_block("doc one", d) + q + result_block("doc two", d) + "end"
    assert strip_results(text, d) == f"{q}\n\n\n\n{q}\n\n\n\nend"


def test_prompts(d):
    prompt = base_prompt("  Who built the Eiffel Tower?  ", d)
    assert prompt.endswith("User: Who built the Eiffel Tower?. Assistant:")
    system = system_prompt(d.name)
    for text in (prompt, system):
        for tag in (d.think_open, d.query_open, d.query_close, d.result_open, d.result_close, d.answer_open):
            assert tag in text
        assert ("\\boxed" in text) == (d.name == "research")
    assert chat_messages(" q ", d) == [{"role": "system", "content": system}, {"role": "user", "content": "q"}]


# --- property-based fuzzing -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=any_text, name=dialects)
def test_parsers_never_raise(text, name):
    d = DIALECTS[name]
    q = extract_query(text, d)
    a = extract_answer(text, d)
    assert q is None or isinstance(q, str)
    assert a is None or isinstance(a, str)
    report = check_format(text, d)
    assert isinstance(report, FormatReport) and isinstance(report.ok, bool)
    assert (report.reason is None) == report.ok
    assert report.num_queries >= 0
    if report.ok:
        assert extract_answer(strip_results(text, d), d) is not None
    for reading in ANSWER_READINGS:
        a = answer_block(text, d, reading)
        assert a is None or isinstance(a, str)
    for check in (check_research_code(text, d), check_r1_searcher_code(text, d)):
        assert isinstance(check.ok, bool) and (check.reason is None) == check.ok


@settings(max_examples=300, deadline=None)
@given(text=any_text, gold=golds, name=dialects, scheme=st.sampled_from(sorted(SCHEMES)))
def test_compute_score_never_raises(text, gold, name, scheme):
    out = compute_score(data_source="fuzz", solution_str=text, ground_truth=gold, scheme=scheme, dialect=name)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in out.values())
    lo, hi = SCHEMES[scheme].bounds
    assert lo <= out["score"] <= hi
    for key in ("f1", "em", "cover_em", "acc_r", "subem", "format", "truncated"):
        assert 0.0 <= out[key] <= 1.0
    assert out["em"] <= out["cover_em"] <= out["acc_r"] and out["em"] <= out["subem"]


@settings(max_examples=300, deadline=None)
@given(prefix=any_text, q=st.text(), name=dialects)
def test_extract_query_round_trip(prefix, q, name):
    d = DIALECTS[name]
    assume(d.query_open not in q and d.query_close not in q)
    assert extract_query(prefix + d.query_open + q + d.query_close, d) == q.strip()


@settings(max_examples=300, deadline=None)
@given(text=any_text, name=dialects)
def test_strip_results_matches_lazy_regex(text, name):
    d = DIALECTS[name]
    pattern = re.escape(d.result_open) + ".*?" + re.escape(d.result_close)
    assert strip_results(text, d) == re.sub(pattern, "", text, flags=re.DOTALL)
