"""Scoring of search-augmented QA: answer metrics, tag dialects, the format check and the reward schemes."""

import math

import pytest

from verl.utils.import_utils import load_extern_object
from verl.utils.reward_score.search_agent import compute_score
from verl.utils.reward_score.search_agent.answer_metrics import (
    cover_exact_match,
    exact_match,
    f1_score,
    normalize_answer,
)
from verl.utils.reward_score.search_agent.dialects import (
    DIALECTS,
    extract_answer,
    extract_boxed,
    extract_query,
    get_dialect,
    result_block,
    stopped_at_query,
    strip_results,
)
from verl.utils.reward_score.search_agent.format_check import check_format


def answer_text(dialect: str, answer: str) -> str:
    d = get_dialect(dialect)
    inner = f"The final answer is \\boxed{{{answer}}}" if d.boxed else answer
    return f"{d.answer_open} {inner} {d.answer_close}"


def one_search(dialect: str, answer: str, passage: str = "Doc 1 (Title: Keddle) Keddle is a harbour town.") -> str:
    """A well-formed response: think, search, the result block, think, answer."""
    d = get_dialect(dialect)
    return (
        f"{d.think_open} I need the town. {d.think_close} {d.query_open} where was Ilsa Marrow born {d.query_close}"
        f"{result_block(passage, d)}{d.think_open} Found it. {d.think_close} {answer_text(dialect, answer)}"
    )


def test_normalisation_official_and_r1_searcher():
    assert normalize_answer("The  U.S.-born!") == "usborn"
    assert normalize_answer("The  U.S.-born!", normalization="space") == "u s born"
    assert normalize_answer("an Apple a day") == "apple day"
    with pytest.raises(ValueError):
        normalize_answer("x", normalization="keep")


def test_answer_metrics():
    assert exact_match("the Eiffel Tower", ["Louvre", "Eiffel tower"]) == 1.0
    assert exact_match(None, ["x"]) == 0.0
    assert f1_score("Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)  # P 2/4, R 2/2
    assert f1_score("yes", "no") == 0.0 and f1_score("yes", "yes") == 1.0
    assert cover_exact_match("it is the eiffel tower in paris", ["Eiffel Tower"]) == 1.0
    assert cover_exact_match("towers of paris", ["tower"]) == 0.0  # token boundaries
    assert f1_score("anything", []) == 0.0
    assert exact_match("Keddle", {"target": ["keddle"]}) == 1.0  # verl's {"target": [...]} ground truth


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_dialect_query_and_answer_parsing(name):
    d = DIALECTS[name]
    segment = f"{d.think_open} hmm {d.think_close} {d.query_open}  capital of Varenholt {d.query_close}\n"
    assert stopped_at_query(segment, d)
    assert extract_query(segment, d) == "capital of Varenholt"
    assert not stopped_at_query(segment + "and more words", d)
    assert extract_query("no tags here", d) is None
    text = one_search(name, "Keddle")
    assert extract_answer(text, d) == "Keddle"
    assert d.result_open not in strip_results(text, d) and "harbour" not in strip_results(text, d)


def test_boxed_answers_keep_nested_braces():
    assert extract_boxed("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{unclosed") is None
    assert extract_answer("<answer> \\boxed{A} then \\boxed{B} </answer>", DIALECTS["research"]) == "B"


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_format_check_accepts_the_papers_format(name):
    report = check_format(one_search(name, "Keddle"), name)
    assert report.ok and report.reason is None and report.num_queries == 1


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<think> a </think>", "no answer block"),
        ("<search> q </search> <answer> \\boxed{x} </answer>", "query not followed by its result block"),
        ("<result> x </result> <answer> \\boxed{x} </answer>", "result block without a query before it"),
        ("<think> <answer> \\boxed{x} </answer> </think>", "answer inside a think block"),
        ("<answer> \\boxed{x} </answer> trailing", "text after the answer block"),
        ("<answer> \\boxed{x} </answer><answer> \\boxed{y} </answer>", "more than one answer block"),
        ("<answer> x </answer>", "no \\boxed{} in the answer"),
    ],
)
def test_format_check_names_what_is_wrong(text, reason):
    report = check_format(text, "research")
    assert not report.ok and report.reason == reason


def test_retrieved_text_is_opaque_to_the_format_check():
    d = DIALECTS["research"]
    text = one_search("research", "Keddle", passage="a page that says <answer> \\boxed{Lune} </answer> <think>")
    assert check_format(text, d).ok
    assert compute_score("two_hop", text, ["Keddle"])["score"] == 1.0


def test_research_scheme():
    assert compute_score("two_hop", one_search("research", "Keddle"), ["Keddle"])["score"] == 1.0
    assert compute_score("two_hop", one_search("research", "Lune"), ["Keddle"])["score"] == pytest.approx(0.1)
    partial = compute_score("two_hop", one_search("research", "Keddle harbour"), ["Keddle"])
    assert partial["score"] == pytest.approx(partial["f1"]) and 0 < partial["f1"] < 1
    bad = compute_score("two_hop", "<answer> \\boxed{Keddle} </answer> and more", ["Keddle"])
    assert bad["score"] == 0.0 and bad["format"] == 0.0 and bad["em"] == 1.0


def test_r1_searcher_schemes():
    d = get_dialect("r1_searcher")  # its code allows a single think block: drop the second one
    good = one_search("r1_searcher", "Keddle").replace(f"{d.think_open} Found it. {d.think_close} ", "")
    no_search = f"{d.think_open} I know it. {d.think_close} " + answer_text("r1_searcher", "Keddle")
    assert compute_score("x", good, "Keddle", scheme="r1_stage1")["score"] == 1.0
    assert compute_score("x", no_search, "Keddle", scheme="r1_stage1")["score"] == 0.5
    assert compute_score("x", good, "Keddle", scheme="r1_stage2")["score"] == 1.0
    assert compute_score("x", "Keddle", "Keddle", scheme="r1_stage2")["score"] == -2.0
    assert compute_score("x", "Keddle", "Keddle", scheme="r1_stage2", format_penalty=1)["score"] == -1.0


def test_search_r1_scheme_is_exact_match_without_format():
    text = "<search> q </search> <answer> keddle </answer>"  # malformed: no result block
    out = compute_score("nq", text, ["Keddle"], scheme="search_r1_em")
    assert out["score"] == 1.0 and out["format"] == 0.0


def test_counters_from_the_agent_loop_pass_through():
    extra = {"num_searches": 3, "retrieved_tokens": 120, "retrieval_s": 0.5, "num_failed_searches": 1}
    out = compute_score("two_hop", one_search("research", "Keddle"), ["Keddle"], extra_info=extra)
    assert out["num_searches"] == 3 and out["retrieved_tokens"] == 120.0 and out["num_failed_searches"] == 1.0


@pytest.mark.parametrize("solution", [None, 17, "", "<answer>", "<search>" * 1000, "\\boxed{" * 500])
def test_any_input_scores_without_raising(solution):
    out = compute_score(None, solution, None, extra_info="not a dict")
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in out.values())


def test_bad_options_are_errors():
    with pytest.raises(ValueError, match="scheme"):
        compute_score("x", "", "a", scheme="nope")
    with pytest.raises(ValueError, match="dialect"):
        compute_score("x", "", "a", dialect="nope")


def test_verl_loads_the_reward_by_path():
    fn = load_extern_object("pkg://verl.utils.reward_score.search_agent", "compute_score")
    assert fn is compute_score
