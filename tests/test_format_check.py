import pytest

from research_plugin.core.dialects import DIALECTS, result_block
from research_plugin.core.format_check import FormatReport, check_format


def answer(d, text="Paris"):
    body = f"The final answer is \\boxed{{{text}}}" if d.boxed else text
    return f"{d.answer_open} {body} {d.answer_close}"


def query(d, q="capital of France"):
    return f"{d.query_open} {q} {d.query_close}"


def result(d, body="Doc 1 (Title: Paris) Paris is the capital of France."):
    return result_block(body, d)


def think(d, text="I should look this up."):
    return f"{d.think_open} {text} {d.think_close}"


@pytest.fixture(params=sorted(DIALECTS))
def d(request):
    return DIALECTS[request.param]


def test_valid_search_then_answer(d):
    text = think(d) + query(d) + result(d) + think(d, "Found it.") + answer(d)
    assert check_format(text, d) == FormatReport(True, None, 1)
    assert check_format(text, d.name).ok


def test_valid_variants(d):
    assert check_format(answer(d), d).ok  # no search, no think
    assert check_format(answer(d) + "\n  \n", d).ok  # trailing whitespace
    two = query(d, "a") + result(d) + query(d, "b") + result(d) + answer(d)
    assert check_format(two, d).num_queries == 2 and check_format(two, d).ok
    # a query inside a think block (R1-Searcher searches "while thinking")
    inside = f"{d.think_open} hmm {query(d)}{result(d)} ok {d.think_close}{answer(d)}"
    assert check_format(inside, d).ok
    # empty query is a format question for the agent loop, not here
    assert check_format(f"{d.query_open}{d.query_close}" + result(d) + answer(d), d).ok


def test_tags_inside_results_are_opaque(d):
    junk = (
        f"{d.query_open} {d.answer_open} x {d.answer_close} {d.think_close} {d.result_open} "
        f"{d.query_close} \\boxed{{ ∀∃ \x00"
    )
    text = query(d) + result(d, junk) + answer(d)
    assert check_format(text, d).ok


@pytest.mark.parametrize(
    "build, reason",
    [
        (lambda d: query(d) + answer(d), "query not followed by its result block"),
        (lambda d: query(d) + " some text " + result(d) + answer(d), "query not followed by its result block"),
        (lambda d: query(d), "query not followed by its result block"),
        (lambda d: answer(d) + query(d) + result(d), "text after the answer block"),
        (lambda d: answer(d) + answer(d), "more than one answer block"),
        (lambda d: answer(d) + " thanks!", "text after the answer block"),
        (lambda d: f"{d.query_open} capital " + answer(d), "unclosed or nested query"),
        (lambda d: f"{d.query_open} a {query(d)}" + result(d) + answer(d), "unclosed or nested query"),
        (lambda d: result(d) + answer(d), "result block without a query before it"),
        (lambda d: query(d) + result(d) + result(d) + answer(d), "result block without a query before it"),
        (lambda d: query(d) + f"{d.result_open} truncated", "unclosed result block"),
        (lambda d: f"x {d.query_close}" + answer(d), None),
        (lambda d: f"{d.result_close}" + answer(d), None),
        (lambda d: f"{d.think_open} a {d.think_open} b {d.think_close}" + answer(d), "nested think block"),
        (lambda d: f"{d.think_open} never closed " + answer(d), "answer inside a think block"),
        (lambda d: f"{d.think_open} never closed", "unclosed think block"),
        (lambda d: f"oops {d.think_close}" + answer(d), None),
        (lambda d: f"{d.answer_open} Paris", "unclosed answer block or tag inside it"),
        (lambda d: f"{d.answer_open} {query(d)} {d.answer_close}", "unclosed answer block or tag inside it"),
        (lambda d: think(d), "no answer block"),
        (lambda d: "", "no answer block"),
    ],
)
def test_invalid(d, build, reason):
    report = check_format(build(d), d)
    assert not report.ok
    if reason is None:  # a stray close tag
        assert report.reason.startswith("stray ")
    else:
        assert report.reason == reason


def test_boxed_required_only_for_boxed_dialects():
    research, search_r1 = DIALECTS["research"], DIALECTS["search_r1"]
    plain = "<answer> Paris </answer>"
    assert check_format(plain, research).reason == "no \\boxed{} in the answer"
    assert check_format(plain, search_r1).ok
    assert not check_format("<answer> \\boxed{Paris </answer>", research).ok  # unbalanced braces
    assert check_format("<answer> \\boxed{\\frac{1}{2}} </answer>", research).ok


def test_other_dialects_tags_are_plain_text():
    r1 = DIALECTS["r1_searcher"]
    text = "<search> q </search> " + answer(r1)
    assert check_format(text, r1).ok
    assert not check_format(text, DIALECTS["search_r1"]).ok


def test_num_queries_counts_until_failure(d):
    text = query(d) + result(d) + query(d)
    assert check_format(text, d) == FormatReport(False, "query not followed by its result block", 2)


def test_huge_and_junk_input_does_not_raise(d):
    tags = [d.query_open, d.query_close, d.result_open, d.result_close, d.answer_open, d.answer_close]
    big = "".join(tags * 20_000) + "\ud800 \U0001f600" * 1000
    assert isinstance(check_format(big, d), FormatReport)
    assert isinstance(check_format(query(d) + result(d) * 5000, d), FormatReport)
